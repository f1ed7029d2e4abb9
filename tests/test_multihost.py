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

EVAL_WORKER = r'''
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from phi1 import cli
cli.maybe_init_distributed()
sys.path.insert(0, sys.argv[1])
from test_train import tiny_config
from phi1 import generate, sharding, train
from phi1.evals import during_training
from phi1.tokenizer import load_tokenizer
corpus = json.loads(sys.argv[2])
config = tiny_config(corpus, mesh="fsdp", eval_humaneval_every=1, eval_limit=6,
                     eval_max_new_tokens=8, eval_batch_size=6)
trainer = train.Trainer(config)
state = trainer.init_state()
rows = []
prefill = generate._prefill
def recording(*args, **kwargs):
  out = prefill(*args, **kwargs)
  rows.append(sorted(s.data.shape[0] for s in out.tokens_BN.addressable_shards))
  return out
generate._prefill = recording
evals = during_training.build(config, trainer)
tasks = evals.pass_tasks["humaneval"]
with sharding.activation_sharding(trainer.mesh, trainer.rules):
  texts = generate.generate(trainer.model(state), load_tokenizer(corpus["tokenizer"]),
                            [t.prompt for t in tasks], max_new_tokens=8, batch_size=6,
                            truncate="left", mesh=trainer.mesh)
passk = evals.run(state, done=1, last_step=1, eval_step=False)
print("EVAL", json.dumps([jax.process_index(), texts, rows, passk]), flush=True)
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


def test_in_training_generation_is_split_over_processes_and_executed_once(corpus, tmp_path):
  from phi1 import generate
  from phi1.evals import humaneval
  from phi1.tokenizer import load_tokenizer
  script = tmp_path / "eval_worker.py"
  script.write_text(EVAL_WORKER)
  outs = _launch([sys.executable, str(script), str(pathlib.Path(__file__).parent),
                  json.dumps(corpus)], tmp_path)
  results = sorted(json.loads(line.split("EVAL", 1)[1]) for out in outs
                   for line in out.splitlines() if line.startswith("EVAL"))
  assert [r[0] for r in results] == [0, 1]
  # Batches of 6 rounded up to 8 rows over the 4 devices of 2 processes: each device decodes 2
  # rows of a batch (unsplit, every device would decode all of them).
  for _, _, rows, _ in results:
    assert rows and all(r == [2, 2] for r in rows)
  # Both processes return every completion, and they equal one process decoding alone.
  single = train.Trainer(tiny_config(corpus, mesh="fsdp"),
                         mesh=sharding.make_mesh("fsdp", jax.devices()[:4]))
  expected = generate.generate(single.model(single.init_state()),
                               load_tokenizer(corpus["tokenizer"]),
                               [t.prompt for t in humaneval.load()[:6]], max_new_tokens=8,
                               truncate="left")
  assert results[0][1] == results[1][1] == expected
  # Process 0 executes and reports pass@1; process 1 executes nothing.
  assert "humaneval_pass@1" in results[0][3] and not any("pass@" in k for k in results[1][3])
