"""phi1.memory_plan (`phi1 plan`): XLA's per-device memory of the compiled train step, fit and the
micro-batch search, on a tiny config over the test host's 8 CPU devices (seconds)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from phi1 import config as config_lib
from phi1 import memory_plan
from phi1.model import Phi1Config, count_params

EXPERIMENT = textwrap.dedent("""
    from phi1 import config as config_lib
    from phi1.model import Phi1Config

    def get_config(arg=""):
      c = config_lib.base_config()
      c.model = config_lib.model_config(Phi1Config.tiny(vocab_size=1024, attention_impl="auto"))
      c.batch_size, c.seq_len, c.grad_accum = 32, 128, 1
      c.precision, c.mesh = "bf16", "fsdp"
      return c
""")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  path = tmp_path_factory.mktemp("plan") / "tiny_plan.py"
  path.write_text(EXPERIMENT)
  return str(path)


@pytest.fixture(scope="module")
def config(experiment):
  return config_lib.load(experiment)


@pytest.fixture(scope="module")
def one_step_plan(config):
  return memory_plan.plan(config, jax.devices()[:8], search=False)


def test_plan_reads_the_compiled_step(one_step_plan, config):
  p = one_step_plan
  s = p.step
  # "auto" attention is resolved by the trainer for the compiling backend: XLA on CPU.
  assert p.devices == 8 and p.backend == "cpu" and p.attention_impl == "xla"
  assert s.micro_batch == 4 and s.grad_accum == 1 and p.tokens_per_step == 32 * 128
  n_params = count_params(config_lib.phi1_config(config))
  # fsdp splits the matrices 8 ways; biases and norms stay whole on every device.
  assert n_params * 4 / 8 <= p.params_bytes < n_params * 4 / 4
  assert p.optimizer_bytes >= 2 * p.params_bytes  # Adam's two moments (+ scalar counters)
  # The donated state (params + optimizer) is among the arguments and aliased by the outputs.
  assert s.arguments >= p.params_bytes + p.optimizer_bytes
  assert s.aliased >= p.params_bytes + p.optimizer_bytes
  assert s.temporaries > 0
  assert s.total == s.arguments + s.outputs - s.aliased + s.temporaries
  assert p.fits is None and p.summary()["per_device_bytes"] == s.total


def test_temporaries_grow_with_the_micro_batch(config, one_step_plan):
  accumulated = config.copy_and_resolve_references()
  accumulated.grad_accum = 4  # same global batch, a quarter of it per micro-batch
  step, _ = memory_plan.compile_step(accumulated, jax.devices()[:8])
  assert step.micro_batch == 1
  assert step.temporaries < one_step_plan.step.temporaries
  assert step.total < one_step_plan.step.total


def test_search_finds_the_largest_micro_batch_that_fits(config, one_step_plan):
  devices = jax.devices()[:8]
  totals = {m: memory_plan.compile_step(_with_accum(config, 4 // m), devices)[0].total
            for m in (1, 2)}
  totals[4] = one_step_plan.step.total
  assert totals[1] < totals[2] < totals[4]
  budget = (totals[2] + totals[4]) // 2  # micro-batch 2 fits, 4 does not
  p = memory_plan.plan(config, devices, budget)
  assert p.fits is False and p.micro_batch_max == 2 and p.grad_accum_min == 2
  assert dict(p.searched)[2] == totals[2]
  nothing = memory_plan.plan(config, devices, totals[1] // 2)
  assert nothing.micro_batch_max is None and "none, even 1" in memory_plan.report(nothing)
  roomy = memory_plan.plan(config, devices, totals[4] * 2)
  assert roomy.fits and roomy.micro_batch_max == 4


def _with_accum(config, grad_accum):
  c = config.copy_and_resolve_references()
  c.grad_accum = grad_accum
  return c


def test_cli_starts_its_own_host_devices_and_ends_with_json(experiment, tmp_path):
  """A fresh interpreter without XLA_FLAGS: `phi1 plan` sets the host device count itself."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  run = subprocess.run(
      [sys.executable, "-m", "phi1.cli", "plan", "--config", experiment, "--devices", "4",
       "--device-memory-gb", "100", "--no-search", "--config.grad_accum=2"],
      capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  lines = run.stdout.strip().splitlines()
  summary = json.loads(lines[-1])
  assert summary["devices"] == 4 and summary["fits"] is True and summary["grad_accum"] == 2
  assert summary["micro_batch"] == 32 // 4 // 2
  assert "XLA's memory plan for 4 cpu devices" in lines[0]
  assert "GPU" in lines[0]  # says plainly whose plan it is


def test_cli_bad_config_key_is_one_line(experiment, capsys):
  from phi1 import cli
  code = cli.main(["plan", "--config", experiment, "--devices", "8", "--config.no_such_key=1"])
  assert code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no_such_key" in err[0]
