"""experiments/best_of_n.py: sweeps evaluate every kept finetune checkpoint and keep the best."""

import json
import pathlib

import pytest

from experiments import best_of_n, registry, sweep
from phi1 import fingerprint
from test_registry import fake_run

PASS_AT_1 = {1000: 0.30, 2000: 0.42, 3000: 0.42, 4000: 0.38, 5000: 0.35, 6000: 0.33}


def _fake_eval(calls):
  """An eval_step that records its calls and writes what `phi1 eval --out` writes."""
  def eval_step(step, out: pathlib.Path):
    calls.append(step)
    out.mkdir(parents=True)
    workdir = str(out.parents[1])  # as `phi1 eval --checkpoint WORKDIR --step N` records it
    summary = {"pass@1": PASS_AT_1[step], "protocol": {"generator": {
        "kind": "checkpoint", "path": workdir, "step": step,
        "weights": fingerprint.of_weights(workdir, step)}}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "samples.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "step": step}) + "\n")
    return summary
  return eval_step


def test_the_best_checkpoint_is_selected_and_the_registry_records_all(tmp_path):
  workdir, _ = fake_run(tmp_path, "ft")
  calls = []
  summary = best_of_n.evaluate_checkpoints(workdir, "humaneval", sorted(PASS_AT_1),
                                           _fake_eval(calls))
  assert calls == sorted(PASS_AT_1)
  # 2000 and 3000 tie at 0.42: the later step wins.
  assert summary["pass@1"] == 0.42 and summary["selection"]["best_step"] == 3000
  assert summary["selection"]["final_step"] == 6000
  samples = (workdir / "eval_humaneval" / "samples.jsonl").read_text()
  assert json.loads(samples)["step"] == 3000  # Table 3 reads the selected checkpoint's samples

  row = registry.run_row(workdir)
  assert (row["humaneval_pass@1"], row["humaneval_best_step"]) == (0.42, 3000)
  assert json.loads(row["humaneval_checkpoints"]) == {str(s): p for s, p in PASS_AT_1.items()}
  registry.write([row], tmp_path / "registry.csv")
  back = registry.read(tmp_path / "registry.csv")[0]
  assert back["humaneval_best_step"] == 3000 and back["mbpp_best_step"] is None

  again = []
  best_of_n.evaluate_checkpoints(workdir, "humaneval", sorted(PASS_AT_1), _fake_eval(again))
  assert again == []  # every step's summary is kept: nothing is evaluated twice


def test_select_refuses_what_it_cannot_rank():
  with pytest.raises(ValueError, match="no evaluated checkpoints"):
    best_of_n.select({})
  with pytest.raises(ValueError, match=r"\[2000\] have no pass@1"):
    best_of_n.select({1000: {"pass@1": 0.1}, 2000: {}})


def _run(tmp_path, init_from):
  config = sweep.config_lib.base_config()
  config.init_from = init_from
  workdir = tmp_path / ("ft" if init_from else "pre")
  for step in (1000, 2000, 3000):
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
  return sweep.Run(name=workdir.name, family="f", experiment="x.py", overrides={}, config=config,
                   workdir=workdir, needs=[])


@pytest.mark.parametrize("init_from, best_of", [("runs/base/export", True), ("", True),
                                                ("runs/base/export", False)])
def test_sweep_evaluates_every_kept_checkpoint_of_finetunes_only(tmp_path, monkeypatch,
                                                                 init_from, best_of):
  calls = []

  def fake_evaluate(bench, *, checkpoint, out, step=None, **options):  # phi1.evals.cli.evaluate
    calls.append((checkpoint, step))
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    summary = {"pass@1": {None: 0.5, 1000: 0.1, 2000: 0.3, 3000: 0.2}[step]}
    (pathlib.Path(out) / "summary.json").write_text(json.dumps(summary))
    return summary

  from phi1.evals import cli as eval_cli
  monkeypatch.setattr(eval_cli, "evaluate", fake_evaluate)
  run = _run(tmp_path, init_from)
  summary = sweep.evaluate(run, "humaneval", limit=None, max_new_tokens=64, best_of_n=best_of)
  if init_from and best_of:
    assert calls == [(str(run.workdir), step) for step in (1000, 2000, 3000)]
    assert summary["selection"]["best_step"] == 2000 and summary["pass@1"] == 0.3
  else:  # pretraining runs, and --eval-export-only: the final export alone
    assert len(calls) == 1 and calls[0][0].endswith("export") and calls[0][1] is None
    assert "selection" not in summary
