"""Multi-host training for real: two processes on localhost, CPU devices, gloo collectives."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker

from phi1 import metrics

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_train import (  # noqa: E402,F401  (corpus is a fixture)
    assert_same_training, corpus, one_device_reference)

WORKER = r'''
import json, os, sys
import jax
import numpy as np
jax.config.update("jax_num_cpu_devices", 2)
from phi1 import sharding
sharding.maybe_init_distributed()
from jax.experimental import multihost_utils
sys.path.insert(0, sys.argv[1])
from test_train import numerics_config, packed_run
from phi1 import train
corpus = json.loads(sys.argv[2])
trainer = train.Trainer(numerics_config(corpus, mesh="fsdp"))
pid, half = jax.process_index(), 4
out, state = packed_run(trainer, rows=slice(pid * half, (pid + 1) * half))
params = [np.asarray(multihost_utils.process_allgather(x, tiled=True))
          for x in jax.tree.leaves(state.params)]
np.savez(f"params_{pid}.npz", *params)
print("RESULT", json.dumps([pid, jax.device_count(), out]), flush=True)
'''

EVAL_WORKER = r'''
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from phi1 import sharding
sharding.maybe_init_distributed()
sys.path.insert(0, sys.argv[1])
import scripted_model
from test_scripted_eval import MAX_NEW, scripted_config
from phi1 import generate, sharding, train
from phi1.evals import during_training
from phi1.tokenizer import load_tokenizer
corpus = json.loads(sys.argv[2])
config = scripted_config(corpus)
config.mesh, config.evals.samples, config.evals.batch_size = "fsdp", 2, 6
trainer = train.Trainer(config, model_fn=scripted_model.ScriptedPhi1)
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
                            [t.prompt for t in tasks for _ in range(2)], max_new_tokens=MAX_NEW,
                            batch_size=6, truncate="left", mesh=trainer.mesh)
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


def test_two_processes_train_exactly_as_one_device(corpus, tmp_path):
  """2 processes x 2 devices, fsdp, each process feeding its half of every packed, unevenly masked
  batch: per-step loss and grad norm, and the final parameters of 4 updates at the peak LR equal
  one device's (test_train.py: the same batches and tolerances)."""
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  outs = _launch([sys.executable, str(script), str(pathlib.Path(__file__).parent),
                  json.dumps(corpus)], tmp_path)
  results = [json.loads(line.split("RESULT", 1)[1]) for out in outs for line in out.splitlines()
             if line.startswith("RESULT")]
  assert sorted(r[0] for r in results) == [0, 1] and all(r[1] == 4 for r in results)
  reference = one_device_reference(corpus, "fp32")
  for pid, _, out in results:
    with np.load(tmp_path / f"params_{pid}.npz") as saved:
      params = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert_same_training(out, params, reference, "fp32")


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
  """The scripted model (tests/scripted_model.py) writes HumanEval/0-2's reference solutions: two
  processes decode them (each device 2 of 8 rows), both get every completion, and process 0 alone
  executes them and reports pass@1 = 1."""
  import scripted_model
  from test_scripted_eval import TASKS
  from phi1.evals import humaneval
  from phi1.tokenizer import load_tokenizer
  tasks = humaneval.load()[:TASKS]
  script = scripted_model.write_script(tmp_path / "script.json", load_tokenizer(corpus["tokenizer"]),
                                       [t.prompt for t in tasks], [t.reference for t in tasks])
  worker = tmp_path / "eval_worker.py"
  worker.write_text(EVAL_WORKER)
  outs = _launch([sys.executable, str(worker), str(pathlib.Path(__file__).parent),
                  json.dumps(corpus)], tmp_path, {scripted_model.SCRIPT_ENV: script})
  results = sorted(json.loads(line.split("EVAL", 1)[1]) for out in outs
                   for line in out.splitlines() if line.startswith("EVAL"))
  assert [r[0] for r in results] == [0, 1]
  # 3 tasks x 2 samples = batches of 6, rounded up to 8 rows over the 4 devices of 2 processes:
  # each device decodes 2 rows of a batch (unsplit, every device would decode all of them).
  for _, _, rows, _ in results:
    assert rows and all(r == [2, 2] for r in rows)
  expected = [t.reference for t in tasks for _ in range(2)]
  assert results[0][1] == results[1][1] == expected
  # Process 0 executes and reports pass@1; process 1 executes nothing.
  assert results[0][3]["humaneval_pass@1"] == 1.0 and not any("pass@" in k for k in results[1][3])
