"""The datatrove engine: the same dedup pipeline on Ray (a local Ray, num_cpus=2) gives the local
executor's bytes (on a real Slurm cluster: tests/test_slurm_data_gen.py); a run SIGKILLed at any
moment and rerun gives an uninterrupted run's bytes."""

import json
import os
import pathlib
import re
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from data_gen import engine, shards
from data_gen.filtering import dedup

REPO = pathlib.Path(__file__).resolve().parents[1]
# 4 x 4 MinHash buckets instead of 14 x 8: the bucket step runs one task per bucket, and each Ray
# task or Slurm array entry costs seconds of start-up here (dedup quality: tests/test_dedup.py).
SMALL = ["--bands", "4", "--rows", "4"]


def _corpus(path: pathlib.Path, n: int = 120, seed: int = 0):
  rng = random.Random(seed)
  vocab = [f"name{i}" for i in range(2000)]
  texts = []
  for i in range(n):
    if i % 10 == 9:  # a near copy of an earlier file
      words = texts[i - 5].split(" ")
      words[rng.randrange(len(words))] = "changed"
      texts.append(" ".join(words))
    elif i % 10 == 8:
      texts.append(texts[i - 3] + "\n\n")  # an exact copy
    else:
      texts.append("\n".join(f"    {rng.choice(vocab)} = {rng.choice(vocab)}({rng.randrange(99)})"
                             for _ in range(60)))
  records = [{"id": f"r{i}", "text": t, "source": "s", "kind": "code", "python_ok": True,
              "meta": {}} for i, t in enumerate(texts)]
  for r in range(2):
    shards.write_shard(str(path), r, records[r::2])
  shards.write_manifest(str(path), "test")


def _outputs(out: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(out)): p.read_bytes()
          for sub in ("records", "clusters") for p in sorted((out / sub).glob("shard-*"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("engine")
  _corpus(root / "in")
  assert dedup.main(["--input", str(root / "in"), "--out", str(root / "local"), "--tasks", "2",
                     "--workers", "2", *SMALL]) == 0
  local = _outputs(root / "local")
  assert len(local) == 8 and json.loads((root / "local" / "summary.json").read_text())["kept"] < 120
  return root, local


def test_ray_equals_local(corpus):
  ray = pytest.importorskip("ray")
  root, local = corpus
  ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
  try:
    assert dedup.main(["--input", str(root / "in"), "--out", str(root / "ray"), "--tasks", "2",
                       "--executor", "ray", "--mem-per-cpu-gb", "0.25", *SMALL]) == 0
  finally:
    ray.shutdown()
  assert _outputs(root / "ray") == local


def test_sigkill_then_rerun_gives_the_same_bytes(corpus, tmp_path):
  root, local = corpus
  out = tmp_path / "killed"
  cmd = [sys.executable, "-m", "data_gen", "dedup", "--input", str(root / "in"), "--out", str(out),
         "--tasks", "2", "--workers", "1", *SMALL]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for marker in ("exact_signatures/completions/00000", "minhash_signatures/completions/00000",
                 "filter/completions/00000"):
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "_engine" / marker).exists() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and every worker it started, mid-stage
    proc.wait()
  assert subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0
  assert _outputs(out) == local


def test_bad_engine_settings_are_clear():
  with pytest.raises(ValueError, match="--slurm-partition"):
    engine.EngineConfig(executor="slurm")
  with pytest.raises(ValueError, match="--tasks"):
    engine.EngineConfig(tasks=0)


def test_a_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
  step = engine.Step("nothing", [], 1)
  with pytest.raises(ImportError, match=r"pip install 'phi1\[ray\]'"):
    engine.run(tmp_path, [step], engine.EngineConfig(executor="ray"))
  monkeypatch.setitem(sys.modules, "datatrove", None)
  with pytest.raises(ImportError, match=r"pip install 'datatrove==0.10.1'"):
    engine.require_datatrove()


def test_corpus_stages_leave_jax_unloaded_so_workers_fork():
  # A process with JAX loaded starts its engine workers with forkserver (~0.5 s a step, and their
  # CPU time is not this process's to measure); the filter stages' imports, the demo tokenizer
  # included, must not pull it in through phi1.data's package imports.
  code = textwrap.dedent("""
      import sys
      from data_gen import engine
      from data_gen.filtering import pipeline, select, stages
      from phi1 import demo_corpus
      from phi1.data import records
      assert "jax" not in sys.modules and "grain" not in sys.modules, "JAX was imported"
      print(engine._start_method())
  """)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == "fork"


def test_the_callers_heap_is_frozen_while_a_step_runs_and_unfrozen_after(tmp_path):
  from datatrove.pipeline.base import PipelineStep
  seen = []

  class Record(PipelineStep):
    name, type = "record", "test"

    def run(self, data=None, rank=0, world_size=1):
      import gc
      seen.append(gc.get_freeze_count())
      return iter(())

  import gc
  alive = [object() for _ in range(1000)]  # noqa: F841  (objects the caller holds)
  engine.run(tmp_path / "stage", [engine.Step("record", [Record()], 1)],
             engine.EngineConfig(tasks=1, workers=1), log=lambda m: None)
  assert seen and seen[0] >= 1000  # the one in-process task ran with the heap frozen
  assert gc.get_freeze_count() == 0


def test_model_steps_get_gpus_and_other_steps_none(tmp_path, monkeypatch):
  """--gpus-per-task: Slurm requests GPUs only for the steps that run a model; locally each
  task is pinned to its own GPUs before it loads JAX."""
  config = engine.EngineConfig(executor="slurm", partition="gpu", gpus_per_task=2)
  model = engine._executor(engine.Step("score", [], 4, gpu=True), tmp_path / "a", config, None)
  other = engine._executor(engine.Step("dedup", [], 4), tmp_path / "b", config, None)
  assert model.get_sbatch_args()["gpus"] == 2 and "gpus" not in other.get_sbatch_args()
  assert [engine.visible_gpus(r, 2, ["0", "1", "2", "3"]) for r in range(3)] == ["0,1", "2,3",
                                                                                  "0,1"]
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
  assert list(engine.PinGpus(1).run(None, rank=2, world_size=4)) == []
  assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
  with pytest.raises(ValueError, match="--gpus-per-task"):
    engine.EngineConfig(gpus_per_task=-1)



def test_a_failed_task_shows_its_last_log_lines_and_the_console_stays_quiet(tmp_path, capfd):
  from datatrove.pipeline.base import PipelineStep

  class Explode(PipelineStep):
    name, type = "explode", "test"

    def run(self, data=None, rank=0, world_size=1):
      if rank == 1:
        raise RuntimeError("bad row 17 in shard 1")
      return iter(())

  config = engine.EngineConfig(tasks=2, workers=2)
  with pytest.raises(engine.StageFailed) as failed:
    engine.run(tmp_path, [engine.Step("explode", [Explode()], 2)], config)
  message = str(failed.value)
  # Task 0 may be cut short too: the local pool stops when task 1 raises.
  unfinished = re.search(r"tasks \[([\d, ]+)\] did not finish", message).group(1)
  assert "1" in unfinished.split(", ") and "bad row 17 in shard 1" in message
  assert str(tmp_path / "_engine" / "explode" / "logs" / "task_00001.log") in message
  assert "bad row 17" not in capfd.readouterr().err   # datatrove's lines went to the logs
  assert (tmp_path / "_engine" / "logs" / "explode.log").exists()
