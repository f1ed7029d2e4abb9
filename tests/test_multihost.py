"""Multi-host training for real: two processes on localhost, CPU devices, gloo collectives."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from phi1 import metrics, sharding, train

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_train import corpus, synthetic_batch, tiny_config  # noqa: E402,F401  (fixture reuse)

WORKER = r'''
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from phi1 import cli
cli.maybe_init_distributed()
sys.path.insert(0, sys.argv[1])
from test_train import synthetic_batch, tiny_config
from phi1 import train
corpus = json.loads(sys.argv[2])
trainer = train.Trainer(tiny_config(corpus, mesh="fsdp"))
state, losses, half = trainer.init_state(), [], 4
for i in range(3):
  batch = synthetic_batch(i, 8, 64)
  local = {k: v[jax.process_index() * half:(jax.process_index() + 1) * half] for k, v in batch.items()}
  state, m = trainer.step(state, local)
  losses.append(float(m["loss"]))
print("LOSSES", json.dumps([jax.process_index(), jax.device_count(), losses]), flush=True)
'''


def _launch(args, tmp_path, extra_env=None):
  port = portpicker.pick_unused_port()
  procs = []
  for pid in range(2):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(pid), **(extra_env or {})}
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=tmp_path))
  outs = [p.communicate(timeout=420)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def test_two_processes_match_one_process(corpus, tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  outs = _launch([sys.executable, str(script), str(pathlib.Path(__file__).parent),
                  json.dumps(corpus)], tmp_path)
  results = [json.loads(line.split("LOSSES", 1)[1]) for out in outs for line in out.splitlines()
             if line.startswith("LOSSES")]
  assert sorted(r[0] for r in results) == [0, 1] and all(r[1] == 4 for r in results)
  # The same global batch on 4 devices of one process gives the same losses.
  single = train.Trainer(tiny_config(corpus, mesh="fsdp"),
                         mesh=sharding.make_mesh("fsdp", jax.devices()[:4]))
  state, expected = single.init_state(), []
  for i in range(3):
    state, m = single.step(state, synthetic_batch(i, 8, 64))
    expected.append(float(m["loss"]))
  for _, _, losses in results:
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_cli_train_runs_on_two_processes(corpus, tmp_path):
  cfg = tmp_path / "exp.py"
  cfg.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_train import tiny_config\n"
                 "def get_config():\n  return tiny_config(%r, mesh='fsdp', steps=4, checkpoint_every=2)\n"
                 % (str(pathlib.Path(__file__).parent), corpus))
  workdir = tmp_path / "run"
  _launch([sys.executable, "-m", "phi1.cli", "train", "--config", str(cfg), "--workdir",
           str(workdir), "--no-progress"], tmp_path, {"PYTHONPATH": str(pathlib.Path.cwd())})
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r]
  assert steps == [1, 2, 3, 4]  # written once, by process 0
  assert (workdir / "checkpoints" / "4").is_dir()
  data_states = list((workdir / "checkpoints" / "4" / "data").glob("process_*-of-2.json"))
  assert len(data_states) == 2  # each process saved its own data position
