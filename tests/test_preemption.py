"""SIGTERM in the middle of a real CPU run: the step finishes, a checkpoint is saved, exit 0; the
rerun ends with the losses of an uninterrupted run. SIGINT: exit 130."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from phi1 import metrics, preemption, train
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _logged_steps(workdir) -> int:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
           if line.strip().endswith("}")]
  return max(steps, default=0)


def _start_and_signal(cfg_file, workdir, signum, after_step):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.Popen(
      [sys.executable, "-m", "phi1.cli", "train", "--config", str(cfg_file), "--workdir",
       str(workdir), "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, cwd=REPO)
  deadline = time.time() + 300
  while _logged_steps(workdir) < after_step and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def test_sigterm_mid_run_checkpoints_exits_0_and_the_rerun_matches(corpus, tmp_path):  # noqa: F811
  """12 steps straight == SIGTERM after ~step 3 (no periodic checkpoint until 12), then rerun."""
  overrides = {"steps": 12, "checkpoint_every": 100, "data.shuffle_seed": 3,
               "model.resid_dropout": 0.1}
  cfg_file = tmp_path / "exp.py"
  cfg_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom test_train import tiny_config\n"
      "def get_config():\n  return tiny_config(%r, **%r)\n"
      % (str(REPO / "tests"), corpus, overrides))
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  train.run(tiny_config(corpus, **overrides), straight, progress=False)

  code, out, err = _start_and_signal(cfg_file, stopped, signal.SIGTERM, after_step=3)
  assert code == 0, err[-2000:]
  step = int(out.split("stopped at step ")[1].split(";")[0])
  assert 3 <= step < 12, out
  assert f"stopped at step {step}; rerun the same command to resume" in out
  assert "Traceback" not in err
  saved = [p.name for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved == [str(step)] and not (stopped / "export").exists()

  subprocess.run([sys.executable, "-m", "phi1.cli", "train", "--config", str(cfg_file),
                  "--workdir", str(stopped), "--no-progress"], check=True, capture_output=True,
                 cwd=REPO, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  a = [(r["step"], r["loss"]) for r in metrics.read_metrics(straight) if "loss" in r]
  b = [(r["step"], r["loss"]) for r in metrics.read_metrics(stopped) if "loss" in r]
  assert [s for s, _ in a] == list(range(1, 13)) and a == b


def test_sigint_is_exit_130_and_a_second_one_stops_at_once():
  before = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers ignore SIGINT
  stop = preemption.StopSignals()
  stop.install()
  try:
    assert not stop.save_due(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and stop.save_due(2)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    stop.uninstall()
  assert signal.getsignal(signal.SIGINT) is before  # put back as it was
  assert preemption.Stopped(7, signal.SIGINT).exit_code == 130
  assert preemption.Stopped(7, signal.SIGTERM).exit_code == 0


def test_time_based_checkpoints(monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
  stop = preemption.StopSignals(every_minutes=2)
  stop.install()
  try:
    clock[0] += 119
    assert not stop.save_due(1)
    clock[0] += 2
    assert stop.save_due(2)
    stop.saved()
    assert not stop.save_due(3)
  finally:
    stop.uninstall()
