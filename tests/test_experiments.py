"""Every experiment file: get_config() and its CPU switch load, keys are the trainer's, sweeps expand."""

import json
import pathlib

import pytest

from experiments import sweep
from phi1 import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = sorted(p for p in (REPO / "experiments").glob("*.py") if "def get_config" in p.read_text())
# Experiments whose switch is not "cpu" (they are CPU-sized already).
CPU_ARGS = {"cpu_demo": ("pretrain", "finetune")}


def flat_keys(tree, prefix=""):
  keys = set()
  for key, value in tree.items():
    keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
  return keys


def check_config(config):
  known = flat_keys(config_lib.base_config().to_dict())
  extra = flat_keys(config.to_dict()) - known
  assert not extra, f"keys the trainer does not read: {sorted(extra)}"
  config_lib.phi1_config(config)  # the model block builds a valid Phi1Config
  for source in config.data.sources:
    entry = source if isinstance(source, dict) else {"path": source}
    assert set(entry) <= {"path", "weight", "name"} and entry["path"]
  assert config.batch_size % config.grad_accum == 0
  assert config.seq_len <= config.model.max_seq_len


def test_the_ablations_and_sweep_configs_exist():
  names = {p.stem for p in FILES}
  assert {"ablation_data", "ablation_pruning", "ablation_knobs", "cpu_sweep"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_config_and_cpu_switch_load_with_valid_keys(path):
  module, _ = sweep.load_experiment(str(path))
  assert "python -m" in module.__doc__ or "phi1 " in module.__doc__  # the launch command
  args = CPU_ARGS.get(path.stem, ("", "cpu"))
  for arg in args:
    check_config(config_lib.load(f"{path}:{arg}" if arg else str(path)))
  if path.stem not in CPU_ARGS:
    cpu = config_lib.load(f"{path}:cpu")
    assert cpu.precision == "fp32" and cpu.model.attention_impl == "xla"
    assert cpu.steps * cpu.batch_size * cpu.seq_len <= 1_000_000  # minutes on a CPU


@pytest.mark.parametrize("path", [p for p in FILES if "def get_sweep" in p.read_text()],
                         ids=lambda p: p.stem)
def test_sweeps_expand_to_valid_runs(path, tmp_path):
  for arg in ("", "cpu"):
    runs = sweep.expand(f"{path}:{arg}" if arg else str(path), tmp_path / (arg or "full"))
    assert len(runs) >= 2
    for run in runs:
      check_config(run.config)
      assert all(need in [r.name for r in runs] for need in run.needs)


def test_paper_ablation_grids():
  data = sweep.expand(str(REPO / "experiments/ablation_data.py"), "/tmp/unused")
  assert {r.name for r in data} == {f"{d}_{s}" for d in ("stackplus", "codetextbook",
                                                         "codetextbook_exercises")
                                    for s in ("350m", "1.3b")}
  by_name = {r.name: r.config for r in data}
  assert by_name["stackplus_1.3b"].model.d_model == 2048
  assert by_name["stackplus_350m"].model.d_model == 1024
  assert by_name["codetextbook_exercises_1.3b"].optimizer.peak_lr == 1e-4  # finetune recipe
  assert by_name["codetextbook_exercises_1.3b"].init_from.endswith("codetextbook_1.3b/export")
  assert by_name["stackplus_350m"].steps == by_name["codetextbook_350m"].steps  # equal compute

  pruning = sweep.expand(str(REPO / "experiments/ablation_pruning.py"), "/tmp/unused")
  sources = {r.name: r.config.data.sources[0]["path"] for r in pruning}
  for tau in (0.95, 0.9, 0.85, 0.8):  # data_gen/decontaminate.py's layout
    assert sources[f"tau_{tau}"].endswith(f"pruned/tau_{tau}/records.jsonl")

  knobs = {r.name: r.config for r in sweep.expand(str(REPO / "experiments/ablation_knobs.py"),
                                                  "/tmp/unused")}
  assert knobs["bf16"].precision == "bf16" and knobs["baseline"].precision == "fp16"
  assert knobs["packing_document"].data.packing == "document"
  assert knobs["finetune_loss_on_prompt_false"].data.loss_on_prompt is False
  assert knobs["rotary_0"].model.rotary_dim == 0


def test_table3_splits_pass_at_1_into_similar_and_non_similar(tmp_path):
  module, _ = sweep.load_experiment(str(REPO / "experiments/ablation_pruning.py"))
  split = {"similar": ["HumanEval/0"], "non_similar": ["HumanEval/1", "HumanEval/2"]}
  report = {"taus": {str(t): {"removed": 7, "split": {"humaneval": split}}
                     for t in module.TAUS}}
  (tmp_path / "report.json").write_text(json.dumps(report))
  for run, results in (("tau_0.9", (True, False, True)), ("unpruned", (False, False, True))):
    out = tmp_path / "runs" / run / "eval_humaneval"
    out.mkdir(parents=True)
    out.joinpath("samples.jsonl").write_text("".join(
        json.dumps({"task_id": f"HumanEval/{i}", "passed": p}) + "\n" for i, p in enumerate(results)))
  rows = {r["run"]: r for r in module.table3(tmp_path / "runs", tmp_path)}
  assert rows["tau_0.9"]["tau"] == "0.9" and rows["unpruned"]["tau"] == "0.8"
  assert (rows["tau_0.9"]["similar"], rows["tau_0.9"]["non_similar"]) == (1.0, 0.5)
  assert (rows["unpruned"]["similar"], rows["unpruned"]["non_similar"]) == (0.0, 0.5)
  assert rows["tau_0.9"]["pass@1"] == pytest.approx(2 / 3)
