"""metrics.jsonl truncation on resume, and the W&B writer (against a recording stand-in module:
wandb itself is an optional dependency, not installed in CI)."""

import json
import sys
import types

from phi1 import metrics


class _RecordingWandb(types.ModuleType):
  """What phi1.metrics uses of wandb: init(...) -> run; run.log(dict, step); run.finish()."""

  def __init__(self):
    super().__init__("wandb")
    self.runs = []

  def init(self, **kwargs):
    wandb = self

    class Run:
      def __init__(self):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        wandb.runs.append(self)

      def log(self, data, step):
        self.logged.append((step, dict(data)))

      def finish(self):
        self.finished = True

    return Run()


def test_wandb_run_is_resumed_by_id_and_gets_every_step(tmp_path, monkeypatch):
  fake = _RecordingWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  first = metrics.MetricsWriter(tmp_path, wandb_project="phi1-ablations")
  for step in (1, 2, 3):
    first.write(step, {"loss": 4.0 - step, "lr": 1e-3})
  first.close()
  resumed = metrics.MetricsWriter(tmp_path, resume_step=2, wandb_project="phi1-ablations")
  resumed.write(3, {"loss": 0.5})
  resumed.close()

  a, b = fake.runs
  assert a.kwargs["project"] == "phi1-ablations" and a.kwargs["resume"] == "allow"
  assert a.kwargs["id"] == b.kwargs["id"] == (tmp_path / "wandb_run_id").read_text()
  assert a.logged == [(1, {"step": 1, "loss": 3.0, "lr": 1e-3}),
                      (2, {"step": 2, "loss": 2.0, "lr": 1e-3}),
                      (3, {"step": 3, "loss": 1.0, "lr": 1e-3})]
  assert b.logged == [(3, {"step": 3, "loss": 0.5})] and a.finished and b.finished
  # metrics.jsonl reads as one run: step 3 of the first attempt was dropped on resume.
  assert [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
      {"step": 1, "loss": 3.0, "lr": 1e-3}, {"step": 2, "loss": 2.0, "lr": 1e-3},
      {"step": 3, "loss": 0.5}]


def test_another_workdir_gets_another_run(tmp_path, monkeypatch):
  fake = _RecordingWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  for name in ("a", "b"):
    metrics.MetricsWriter(tmp_path / name, wandb_project="p").close()
  assert fake.runs[0].kwargs["id"] != fake.runs[1].kwargs["id"]
