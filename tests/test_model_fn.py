"""A researcher's model in the real trainer: a Phi1 subclass with a SwiGLU MLP (whose parameters
carry no logical axes) trained by `train.run(config, workdir, model_fn=...)`, killed and resumed
exactly, its import path recorded, its export loadable."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest
from flax import nnx

from phi1 import checkpoint, metrics, model_fn as model_fn_lib
from phi1.model import Phi1
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]


class PlainSwiGLU(nnx.Module):
  """SwiGLU written as a quick experiment would: nnx.Linear with no logical_axes metadata."""

  def __init__(self, config, rngs):
    self.gate = nnx.Linear(config.d_model, config.d_ff, rngs=rngs)
    self.up = nnx.Linear(config.d_model, config.d_ff, rngs=rngs)
    self.down = nnx.Linear(config.d_ff, config.d_model, rngs=rngs)

  def __call__(self, x_BTD):
    return self.down(jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD))


class SwiGLUPhi1(Phi1):

  def __init__(self, config, *, rngs):
    super().__init__(config, rngs=rngs)
    for block in self.layers:
      block.mlp = PlainSwiGLU(config, rngs)


_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from phi1 import train
from test_model_fn import SwiGLUPhi1
from test_train import tiny_config
config = tiny_config({corpus!r}, **{{'data.shuffle_seed': 3, 'model.resid_dropout': 0.1,
                                     'mesh': 'fsdp', 'model.d_ff': 384}})
train.run(config, sys.argv[1], progress=False, model_fn=SwiGLUPhi1)
"""


def test_swiglu_subclass_trains_resumes_exactly_after_a_kill_and_exports(corpus, tmp_path):  # noqa: F811
  script = tmp_path / "run.py"
  script.write_text(_SCRIPT.format(tests=str(REPO / "tests"), corpus=corpus))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": str(REPO)}
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run([sys.executable, str(script), str(straight)], check=True, env=env,
                 capture_output=True)
  proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once step 5 is checkpointed and step 7 is logged
    log = killed / "metrics.jsonl"
    logged = log.exists() and any(json.loads(line)["step"] >= 7 for line in
                                  log.read_text().splitlines() if line.strip().endswith("}"))
    if logged and (killed / "checkpoints" / "5").is_dir():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "checkpoints" / "10").exists()
  subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env,
                 capture_output=True)
  a = [(r["step"], r["loss"]) for r in metrics.read_metrics(straight) if "loss" in r]
  b = [(r["step"], r["loss"]) for r in metrics.read_metrics(killed) if "loss" in r]
  assert [s for s, _ in a] == list(range(1, 11)) and a == b
  config = json.loads((straight / "config.json").read_text())
  assert config["model_fn"] == "test_model_fn:SwiGLUPhi1"
  model = checkpoint.load_model(straight)
  assert isinstance(model, SwiGLUPhi1)
  assert model.layers[0].mlp.gate.kernel.shape == (128, 384)


def test_model_fn_import_paths():
  assert model_fn_lib.import_path(SwiGLUPhi1) == "test_model_fn:SwiGLUPhi1"
  assert model_fn_lib.import_path(Phi1) == ""
  assert model_fn_lib.resolve("test_model_fn:SwiGLUPhi1") is SwiGLUPhi1
  with pytest.raises(ValueError, match="not importable"):
    model_fn_lib.resolve("test_model_fn:make.<locals>.f")
  with pytest.raises(ValueError, match="cannot be imported"):
    model_fn_lib.resolve("test_model_fn:NoSuchModel")


def test_a_model_without_phi1s_interface_is_refused(corpus):  # noqa: F811
  from phi1 import train
  with pytest.raises(TypeError, match=r"lacks \['config', 'hidden_states', 'lm_head'\]"):
    train.Trainer(tiny_config(corpus), model_fn=lambda config, rngs: PlainSwiGLU(config, rngs))


def test_a_model_fn_defined_in_main_is_refused_at_training_start_with_a_hint():
  from phi1 import config as config_lib, train

  def build(config, rngs):
    return SwiGLUPhi1(config, rngs=rngs)
  build.__module__ = "__main__"  # as in `python my_script.py` defining it
  with pytest.raises(ValueError, match="defined in __main__.*Move it into a module"):
    train.Trainer(config_lib.base_config(), model_fn=build)
