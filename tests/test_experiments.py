"""Every experiment file: get_config() and its CPU switch load, keys are the trainer's, sweeps expand."""

import contextlib
import io
import json
import pathlib
import re

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
  assert {r.name for r in data} == {f"{d}_{g}" for d in ("stackplus", "codetextbook",
                                                         "codetextbook_exercises")
                                    for g in ("350m_26b", "350m_76b", "1.3b")}
  by_name = {r.name: r.config for r in data}
  assert by_name["stackplus_1.3b"].model.d_model == 2048
  assert by_name["stackplus_350m_76b"].model.d_model == 1024
  assert by_name["codetextbook_exercises_1.3b"].optimizer.peak_lr == 1e-4  # finetune recipe
  assert by_name["codetextbook_exercises_1.3b"].init_from.endswith("codetextbook_1.3b/export")
  for group in ("350m_26b", "350m_76b"):  # equal compute within a group
    assert by_name[f"stackplus_{group}"].steps == by_name[f"codetextbook_{group}"].steps
  # Figure 2.1's compute axis: 26B and 76B tokens for 350M; 1.3B Stack+ 76B, phi-1-base 51B.
  billions = {n: c.steps * c.batch_size * c.seq_len / 1e9 for n, c in by_name.items()}
  for name, paper in (("stackplus_350m_26b", 26), ("codetextbook_350m_76b", 76),
                      ("stackplus_1.3b", 76), ("codetextbook_1.3b", 51)):
    assert abs(billions[name] - paper) < 1, name
  assert by_name["codetextbook_1.3b"].optimizer.schedule_steps == 36_000  # phi-1-base: 24K of 36K

  # The LR schedule ends at the run's own last step, also under --set steps=N, except where a run
  # says otherwise (phi-1-base).
  from phi1 import train
  short = {r.name: r.config for r in sweep.expand(str(REPO / "experiments/ablation_data.py"),
                                                  "/tmp/unused", {"steps": "1000"})}
  lr_at_end = {n: float(train.make_schedule(c.optimizer, c.steps)(c.steps))
               for n, c in short.items()}
  assert lr_at_end["stackplus_350m_26b"] == 0.0 and lr_at_end["codetextbook_exercises_1.3b"] == 0.0
  assert lr_at_end["codetextbook_1.3b"] > 0.9e-3

  pruning = sweep.expand(str(REPO / "experiments/ablation_pruning.py"), "/tmp/unused")
  sources = {r.name: r.config.data.sources[0]["path"] for r in pruning}
  for tau in (0.95, 0.9, 0.85, 0.8):  # data_gen/decontaminate.py's layout
    assert sources[f"tau_{tau}"].endswith(f"pruned/tau_{tau}")

  knobs = {r.name: r.config for r in sweep.expand(str(REPO / "experiments/ablation_knobs.py"),
                                                  "/tmp/unused")}
  assert knobs["bf16"].precision == "bf16" and knobs["baseline"].precision == "fp16"
  assert knobs["packing_document"].data.packing == "document"
  assert knobs["finetune_loss_on_prompt_false"].data.loss_on_prompt is False
  assert knobs["rotary_0"].model.rotary_dim == 0


def test_paper_recipes_use_phi15_adam_settings_and_concatenated_mixtures():
  for name in ("phi1_pretrain", "phi1_finetune", "phi1_small_pretrain", "phi1_small_finetune"):
    c = config_lib.load(str(REPO / "experiments" / f"{name}.py"))
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps) == (0.9, 0.98, 1e-7), name
    assert c.data.mixture == "tokens", name  # each token seen equally often (paper §2)
  pretrain = config_lib.load(str(REPO / "experiments/phi1_pretrain.py"))
  assert {s["weight"] for s in pretrain.data.sources} == {1.0}  # sizes, not fixed 6:1 weights


def test_table3_has_the_papers_rows_and_columns_beside_ours(tmp_path):
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
  rows = module.table3(tmp_path / "runs", tmp_path)
  # Every tau is a row pair: phi-1 (the unpruned run, split at each tau) and the retrained run.
  assert [(r["tau"], r["model"]) for r in rows] == [
      (t, m) for t in module.TAUS for m in ("phi-1", "retrained")]
  by = {(r["tau"], r["model"]): r for r in rows}
  retrained = by[(0.9, "retrained")]
  assert (retrained["similar"], retrained["non_similar"]) == (100.0, 50.0)
  assert retrained["total"] == pytest.approx(200 / 3)
  assert (retrained["paper_similar"], retrained["paper_non_similar"],
          retrained["paper_total"]) == (51.6, 36.6, 45.1)
  assert by[(0.95, "phi-1")]["paper_n_similar"] == 71 and by[(0.8, "phi-1")]["similar"] == 0.0
  assert by[(0.8, "retrained")]["total"] is None  # not evaluated yet: no score, not a zero
  text = module.format_table3(rows)
  assert "100.0 / 51.6" in text and "StarCoder-Prompted" in text
  del report["taus"]["0.85"]
  (tmp_path / "report.json").write_text(json.dumps(report))
  with pytest.raises(ValueError, match=r"no results at tau \[0.85\]"):
    module.table3(tmp_path / "runs", tmp_path)
  with pytest.raises(FileNotFoundError, match="run `python -m data_gen decontaminate"):
    module.table3(tmp_path / "runs", tmp_path / "nowhere")


def _dry_run(experiment):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert sweep.main([str(REPO / "experiments" / experiment), "--dry-run", "--root",
                       "/tmp/unused"]) == 0
  return out.getvalue()


def _flops(L, d, ff, tokens, V=51200, T=2048):
  """Training FLOPs from first principles (6N + causal attention), not from phi1/flops.py."""
  return tokens * (6 * (L * (4 * d * d + 2 * d * ff) + d * V) + 6 * L * T * d)


def test_ablation_data_dry_run_budgets_and_the_mfu_the_papers_hours_imply():
  out = _dry_run("ablation_data.py")
  blocks = {b.split()[0]: b for b in out.split("\n\n") if "  tokens " in b}
  assert len(blocks) == 9
  assert "12,400 steps x 1,024 seq x 2,048 tokens = 26,004,684,800" in blocks["stackplus_350m_26b"]
  assert "36,000 steps x 1,024 seq x 2,048 tokens = 75,497,472,000" in blocks["stackplus_1.3b"]
  assert "24,000 steps x 1,024 seq x 2,048 tokens = 50,331,648,000" in blocks["codetextbook_1.3b"]
  for name, hours, flops in (
      ("stackplus_1.3b", 1090, _flops(24, 2048, 8192, 36_000 * 2**21)),
      ("codetextbook_1.3b", 770, _flops(24, 2048, 8192, 24_000 * 2**21)),
      ("codetextbook_exercises_1.3b", 56, _flops(24, 2048, 8192, 6_000 * 256 * 2048))):
    implied = float(re.search(r"implies MFU = .* = ([\d.]+)", blocks[name]).group(1))
    assert implied == pytest.approx(flops / (hours * 3600 * 312e12), abs=1e-3), name
    shown = float(re.search(r"A100-hours .* = ([\d,.]+)  \(", blocks[name]).group(1)
                  .replace(",", ""))
    assert shown == pytest.approx(flops / (312e12 * 0.4) / 3600, rel=1e-3)
  assert 0.4 < implied < 0.45  # the finetune's 7 h on 8 A100s: ~42% MFU
  assert "implies MFU" not in blocks["stackplus_350m_26b"]  # the paper gives no hours there
  small = _flops(20, 1024, 4096, 12_400 * 2**21)
  assert f"= {small:.4g}" in blocks["codetextbook_350m_26b"]


def test_ablation_pruning_dry_run_budgets():
  out = _dry_run("ablation_pruning.py")
  blocks = [b for b in out.split("\n\n") if "  tokens " in b]
  assert len(blocks) == 5  # unpruned + 4 taus, each one phi-1 finetune
  flops = _flops(24, 2048, 8192, 6_000 * 256 * 2048)
  for block in blocks:
    assert "6,000 steps x 256 seq x 2,048 tokens = 3,145,728,000" in block
    implied = float(re.search(r"implies MFU = .* = ([\d.]+)", block).group(1))
    assert implied == pytest.approx(flops / (56 * 3600 * 312e12), abs=1e-3)
  assert re.search(r"total: 5 run\(s\), 15.7B tokens", out)
