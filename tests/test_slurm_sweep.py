"""Sweeps on a real one-node Slurm cluster (tests/slurm_cluster.py), on its CPU partition: submit.sh
queues a base run and a finetune initialised from the base's export; the base is requeued mid-run
(`scontrol requeue`, as a preemption) and later told its time is near (USR1 to the batch shell, as
`--signal=B:USR1@grace` does), resumes from its checkpoint each time with an uninterrupted run's
losses, and the finetune runs after it. A base run that fails takes its finetune out of the queue."""

import contextlib
import io
import json
import pathlib
import re
import subprocess
import textwrap
import time

import pytest

from experiments import sweep
from phi1 import metrics, train
from slurm_cluster import PARTITION, slurm_cluster  # noqa: F401  (a fixture)
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

TESTS = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.requires("slurm")
# Enough steps that `scontrol requeue` lands mid-run; no periodic checkpoint before the end.
BASE = {"steps": 60, "checkpoint_every": 1000, "data.shuffle_seed": 3, "model.resid_dropout": 0.1}


def _experiment(tmp_path, corpus, base, name="two.py"):  # noqa: F811
  path = tmp_path / "exp" / name
  path.parent.mkdir(exist_ok=True)
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(TESTS)!r})
      from test_train import tiny_config

      def get_config(arg=""):
        return tiny_config({dict(corpus)!r}, **{base!r})

      def get_sweep(arg=""):
        return [{{"name": "base"}},
                {{"name": "ft", "init_from": "{{run:base}}/export", "steps": 4}}]
  """))
  return path


def _sweep(*argv) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert sweep.main([str(a) for a in argv]) == 0, out.getvalue()
  return out.getvalue()


def _submit(slurm_dir) -> dict[str, str]:
  """bash submit.sh; {run: its training job id}."""
  done = subprocess.run(["bash", str(slurm_dir / "submit.sh")], capture_output=True, text=True,
                        check=True)
  return dict(re.findall(r"^(\S+) \(train\): job (\d+)$", done.stderr, re.M))


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in metrics.read_metrics(workdir) if "loss" in r]


def _wait_for_step(workdir, step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    path = workdir / "metrics.jsonl"
    if path.is_file() and any(json.loads(line).get("step", 0) >= step
                              for line in path.read_text().splitlines() if line.endswith("}")):
      return
    time.sleep(0.05)
  raise TimeoutError(f"{workdir} did not reach step {step} in {timeout} s: "
                     + "".join(p.read_text()[-2000:] for p in workdir.glob("slurm-*.out")))


def test_a_sweep_queued_by_submit_sh_survives_a_requeue_and_runs_the_finetune_after_its_base(
    slurm_cluster, corpus, tmp_path):  # noqa: F811
  straight = tmp_path / "straight"
  train.run(tiny_config(corpus, **BASE), straight, progress=False)
  root, slurm_dir = tmp_path / "runs", tmp_path / "slurm"
  _sweep(_experiment(tmp_path, corpus, BASE), "--root", root, "--slurm", slurm_dir,
         "--gpus-per-node", "0", "--partition", PARTITION, "--cpus-per-task", "1", "--mem", "2G")
  script = (slurm_dir / "base.sbatch").read_text()
  assert "--gpus-per-node" not in script and "--exclusive" not in script
  assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --mem=2G" in script

  jobs = _submit(slurm_dir)
  assert set(jobs) == {"base", "ft"}
  assert slurm_cluster.job_state(jobs["ft"]) == "PENDING"  # afterok on base
  _wait_for_step(root / "base", 5)
  slurm_cluster.run("scontrol", "requeue", jobs["base"])  # as a preemption does
  log_path = root / "base" / f"slurm-{jobs['base']}.out"
  deadline = time.time() + 300
  while not (first := re.search(r"stopped at step (\d+);", log_path.read_text())):
    assert time.time() < deadline, log_path.read_text()[-3000:]
    time.sleep(0.1)
  stopped = int(first.group(1))
  _wait_for_step(root / "base", stopped + 3)  # the requeued job runs again
  # What Slurm sends --signal-grace seconds before the time limit: USR1 to the batch shell.
  slurm_cluster.run("scancel", "--batch", "--signal=USR1", jobs["base"])
  slurm_cluster.wait_idle(timeout=600)

  log = log_path.read_text()
  assert 5 <= stopped < BASE["steps"], log[-3000:]
  assert "stopped by Slurm (exit 0); a requeued job resumes from the checkpoint" in log
  assert f"resumed from step {stopped} in" in log, log[-3000:]
  near = int(re.findall(r"^stopped at step (\d+);", log, re.M)[1])
  assert stopped < near < BASE["steps"]
  assert f"base: time limit near; checkpoint saved (exit 0), requeueing job {jobs['base']}" in log
  assert f"resumed from step {near} in" in log, log[-3000:]
  assert _losses(root / "base") == _losses(straight)  # as if never interrupted
  base_done = json.loads((root / "base" / "DONE").read_text())
  ft_done = json.loads((root / "ft" / "DONE").read_text())
  assert ft_done["steps"] == 4 and base_done["finished"] <= ft_done["finished"]
  assert (root / "base" / "DONE").stat().st_mtime <= (root / "ft" / "identity.json").stat().st_mtime

  status = _sweep(_experiment(tmp_path, corpus, BASE), "--root", root, "--status")
  lines = dict(line.split(None, 1) for line in status.splitlines())
  assert f"train job {jobs['base']}" in lines["base"] and "DONE (step 60)" in lines["base"]
  assert "DONE (step 4)" in lines["ft"]


def test_a_failed_base_run_cancels_its_finetune_with_a_message(slurm_cluster, corpus, tmp_path):  # noqa: F811
  broken = {**BASE, "steps": 5, "data.sources": [{"path": str(tmp_path / "missing.jsonl"),
                                                  "weight": 1.0}]}
  root, slurm_dir = tmp_path / "runs", tmp_path / "slurm"
  _sweep(_experiment(tmp_path, corpus, broken, "broken.py"), "--root", root, "--slurm", slurm_dir,
         "--gpus-per-node", "0", "--partition", PARTITION, "--time", "10")
  jobs = _submit(slurm_dir)
  slurm_cluster.wait_idle(timeout=300)

  log = "".join(p.read_text() for p in (root / "base").glob("slurm-*.out"))
  assert "phi1: run base failed (exit 1); Slurm cancels the runs that need it " \
         "(--kill-on-invalid-dep): ft" in log, log[-3000:]
  shown = slurm_cluster.run("scontrol", "show", "job", jobs["ft"])
  assert "JobState=CANCELLED" in shown and "Reason=DependencyNeverSatisfied" in shown
  status = _sweep(_experiment(tmp_path, corpus, broken, "broken.py"), "--root", root, "--status")
  lines = dict(line.split(None, 1) for line in status.splitlines())
  assert "FAILED" in lines["base"] and "failed or stopped: phi1: run base failed" in lines["base"]
  assert "CANCELLED (DependencyNeverSatisfied)" in lines["ft"] and "not started" in lines["ft"]
