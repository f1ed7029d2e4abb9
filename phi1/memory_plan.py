"""`phi1 plan`: per-device memory of a config's real train step, from the compiled program.

The step is the trainer's own jitted `train_step` (model, optimizer, mesh, precision, remat,
grad accumulation, scan_layers), lowered from `jax.ShapeDtypeStruct`s of the sharded state and
batch and compiled for N devices; nothing is allocated. `compiled.memory_analysis()` gives XLA's
buffer assignment per device: arguments (parameters, optimizer state, the batch), outputs, the
aliases between them (the state is donated) and temporaries (activations, gradients, workspaces).

This is XLA's plan *for the backend that compiled it*. `phi1 plan` compiles on host (CPU) devices,
which stand in for the N accelerators: the sharding, remat and fusion decisions are the same
program's, but the GPU compiler's buffer assignment, its attention path ("auto" attention is the
flash kernel on a GPU and materialises no [T, T] scores) and the allocator's fragmentation differ.
bench/gpu_check.sh prints this plan beside a GPU's measured peak, so one run calibrates it.
"""

import dataclasses
import json
import math
import os
import sys

GB = 1e9
# Memory per device of the GPUs phi1/flops.py knows (A100: the 80 GB part; V100: the 32 GB one).
DEVICE_MEMORY_GB = {"A100": 80, "H100": 80, "H200": 141, "B200": 180, "L4": 24, "A10": 24,
                    "V100": 32}


@dataclasses.dataclass
class StepMemory:
  """XLA's per-device numbers for one compiled step, in bytes."""
  grad_accum: int
  micro_batch: int  # sequences per device per micro-batch
  arguments: int
  outputs: int
  aliased: int  # output buffers that reuse donated argument buffers
  temporaries: int
  generated_code: int

  @property
  def total(self) -> int:
    """Peak live bytes XLA assigns: arguments + outputs not aliased to them + temporaries (the
    host's generated code is not device memory on an accelerator)."""
    return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass
class Plan:
  devices: int
  backend: str
  attention_impl: str
  tokens_per_step: int
  batch_size: int
  seq_len: int
  step: StepMemory
  params_bytes: int  # per device, as sharded
  optimizer_bytes: int
  gradient_bytes: int  # the float32 gradient (accumulator) of this device's parameter shards
  device_memory: int | None
  micro_batch_max: int | None = None  # largest per-device micro-batch that fits device_memory
  grad_accum_min: int | None = None  # the grad_accum that gives it
  searched: list = dataclasses.field(default_factory=list)  # [(micro_batch, total bytes)]

  @property
  def fits(self) -> bool | None:
    return None if self.device_memory is None else self.step.total <= self.device_memory

  def summary(self) -> dict:
    return {"per_device_bytes": self.step.total, "fits": self.fits,
            "device_memory_bytes": self.device_memory, "micro_batch_max": self.micro_batch_max,
            "grad_accum_min": self.grad_accum_min, "micro_batch": self.step.micro_batch,
            "grad_accum": self.step.grad_accum, "devices": self.devices,
            "arguments_bytes": self.step.arguments, "outputs_bytes": self.step.outputs,
            "aliased_bytes": self.step.aliased, "temporaries_bytes": self.step.temporaries,
            "params_bytes": self.params_bytes, "optimizer_bytes": self.optimizer_bytes,
            "gradient_bytes": self.gradient_bytes, "tokens_per_step": self.tokens_per_step,
            "attention_impl": self.attention_impl, "backend": self.backend}


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def abstract_batch(trainer, batch_size: int, seq_len: int) -> dict:
  """The batch the data pipeline yields, as sharded shapes (segment ids under document packing)."""
  import jax
  import numpy as np
  sh = trainer.batch_sharding
  tokens = jax.ShapeDtypeStruct((batch_size, seq_len), np.int32, sharding=sh)
  batch = {"inputs": tokens, "targets": tokens,
           "loss_mask": jax.ShapeDtypeStruct((batch_size, seq_len), np.float32, sharding=sh)}
  if trainer.config.data.get("packing", "concat") == "document":
    batch["segment_ids"] = batch["positions"] = tokens
  return batch


def compile_step(config, devices) -> tuple[StepMemory, object]:
  """(XLA's per-device memory of `config`'s train step on `devices`, the Trainer)."""
  from phi1 import sharding, train
  mesh = sharding.make_mesh(config.mesh, devices=devices, tensor=config.tensor_parallel)
  trainer = train.Trainer(config, mesh=mesh)
  state = trainer.abstract_state_with_shardings()
  batch = abstract_batch(trainer, config.batch_size, config.seq_len)
  with sharding.activation_sharding(trainer.mesh, trainer.rules):
    compiled = trainer._train_step.lower(state, batch).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError("this backend's compiler gives no memory analysis")
  n_batch = sharding.batch_shards(mesh)
  step = StepMemory(
      grad_accum=int(config.grad_accum),
      micro_batch=config.batch_size // (n_batch * config.grad_accum),
      arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
      aliased=int(stats.alias_size_in_bytes), temporaries=int(stats.temp_size_in_bytes),
      generated_code=int(stats.generated_code_size_in_bytes))
  return step, trainer


def plan(config, devices, device_memory: float | None = None, search: bool = True,
         log=lambda *_: None) -> Plan:
  """Compile `config`'s step for `devices` and, with `device_memory` (bytes) and `search`, find the
  largest per-device micro-batch that fits (the global batch stays; grad_accum changes)."""
  import jax
  step, trainer = compile_step(config, devices)
  abstract = trainer.abstract_state_with_shardings()
  params = _shard_bytes(abstract.params)
  result = Plan(
      devices=len(devices), backend=devices[0].platform,
      attention_impl=trainer.model_config.attention_impl,
      tokens_per_step=config.batch_size * config.seq_len, batch_size=config.batch_size,
      seq_len=config.seq_len, step=step, params_bytes=params,
      optimizer_bytes=_shard_bytes(abstract.opt_state),
      gradient_bytes=sum(math.prod(x.sharding.shard_shape(x.shape)) * 4
                         for x in jax.tree.leaves(abstract.params)),
      device_memory=None if device_memory is None else int(device_memory))
  log(f"compiled: grad_accum={step.grad_accum} (micro-batch {step.micro_batch}/device): "
      f"{step.total / GB:.2f} GB per device")
  if device_memory is not None and search:
    _search_micro_batch(result, config, devices, log)
  return result


def _search_micro_batch(result: Plan, config, devices, log):
  """Bisect over the per-device micro-batches the global batch allows (divisors of the per-device
  batch): memory grows with the micro-batch, so the largest that fits is a boundary."""
  per_device = result.step.micro_batch * result.step.grad_accum
  sizes = [m for m in range(1, per_device + 1) if per_device % m == 0]
  totals = {result.step.micro_batch: result.step.total}

  def total_at(m):
    if m not in totals:
      trial = config.copy_and_resolve_references()
      trial.grad_accum = per_device // m
      totals[m] = compile_step(trial, devices)[0].total
      log(f"compiled: grad_accum={trial.grad_accum} (micro-batch {m}/device): "
          f"{totals[m] / GB:.2f} GB per device")
    return totals[m]

  lo, hi = 0, len(sizes) - 1  # invariant: sizes above hi do not fit, sizes below lo do
  best = None
  while lo <= hi:
    mid = (lo + hi) // 2
    if total_at(sizes[mid]) <= result.device_memory:
      best, lo = sizes[mid], mid + 1
    else:
      hi = mid - 1
  result.micro_batch_max = best
  result.grad_accum_min = None if best is None else per_device // best
  result.searched = sorted(totals.items())


def report(p: Plan) -> str:
  """The human-readable plan; the caller prints `json.dumps(p.summary())` as the last line."""
  gb = lambda b: f"{b / GB:8.2f} GB"
  s = p.step
  lines = [
      f"XLA's memory plan for {p.devices} {p.backend} devices (the compiling backend: a GPU's "
      "compiler, allocator and attention kernel may differ; calibrate with bench/gpu_check.sh)",
      f"  attention_impl   {p.attention_impl}"
      + ("  (on a GPU, 'auto' runs the flash kernel: no [T, T] scores stored)"
         if p.attention_impl == "xla" else ""),
      f"  tokens per step  {p.tokens_per_step:,} ({p.batch_size} x {p.seq_len}); "
      f"micro-batch {s.micro_batch} sequences/device x grad_accum {s.grad_accum}",
      "per device:",
      f"  arguments      {gb(s.arguments)}   (parameters, optimizer state, batch)",
      f"  outputs        {gb(s.outputs)}   ({gb(s.aliased).strip()} of them reuse donated "
      "arguments)",
      f"  temporaries    {gb(s.temporaries)}   (activations, gradients, workspaces)",
      f"  total          {gb(s.total)}",
      "shares (per device, as sharded):",
      f"  parameters     {gb(p.params_bytes)}   (float32 master weights)",
      f"  optimizer      {gb(p.optimizer_bytes)}",
      f"  gradients      {gb(p.gradient_bytes)}   (float32, inside temporaries)",
  ]
  if p.device_memory is not None:
    lines.append(f"device memory    {gb(p.device_memory)}: "
                 + ("fits" if p.fits else "DOES NOT FIT"))
  if p.searched:
    tried = ", ".join(f"{m}: {t / GB:.1f} GB" for m, t in p.searched)
    lines.append(f"micro-batch search (sequences/device: total) {tried}")
    lines.append(f"largest micro-batch that fits: "
                 + (f"{p.micro_batch_max} sequences/device (grad_accum={p.grad_accum_min})"
                    if p.micro_batch_max else "none, even 1 sequence per device"))
  return "\n".join(lines)


HELP_EPILOG = """\
Nothing is allocated: the real train step is compiled from abstract shapes on N host (CPU)
devices standing in for the accelerators, and XLA's buffer assignment is read back. It is XLA's
plan for the CPU compile of the same program: a GPU compile assigns buffers its own way, and
attention_impl="auto" becomes the flash kernel there (no [T, T] scores). The last line is JSON.
"""


def main(argv) -> int:
  import argparse
  from phi1 import cli
  argv_in = list(argv)
  argv, overrides = cli._split_overrides(argv)
  parser = argparse.ArgumentParser(
      prog="phi1 plan", description="Per-device memory of a config's compiled train step.",
      epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
  parser.add_argument("--devices", type=int, required=True, help="devices to plan for")
  parser.add_argument("--device-memory-gb", type=float, default=None,
                      help="memory per device (e.g. 80): report fit and search the micro-batch")
  parser.add_argument("--no-search", action="store_true",
                      help="with --device-memory-gb, only report fit (one compile)")
  args = parser.parse_args(argv)
  if args.devices < 1:
    parser.error("--devices must be >= 1")
  ensure_host_devices(args.devices, ["-m", "phi1.cli", "plan", *argv_in])
  import jax
  from phi1 import config as config_lib
  config = config_lib.apply_overrides(config_lib.load(args.config), overrides)
  devices = jax.devices("cpu")[:args.devices]
  memory = None if args.device_memory_gb is None else args.device_memory_gb * GB
  result = plan(config, devices, memory, search=not args.no_search,
                log=lambda line: print(line, file=sys.stderr, flush=True))
  print(report(result))
  print(json.dumps(result.summary()))
  return 0


_REEXEC_MARK = "PHI1_PLAN_HOST_DEVICES"


def ensure_host_devices(n: int, reexec_args: list[str]):
  """N CPU devices must exist before JAX starts its CPU backend; if it started with fewer, run
  `python *reexec_args` (this command again) in a fresh interpreter with the flag set."""
  flags = os.environ.get("XLA_FLAGS", "")
  flag = f"--xla_force_host_platform_device_count={n}"
  if flag not in flags.split():
    flags = " ".join(f for f in flags.split()
                     if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag
    os.environ["XLA_FLAGS"] = flags.strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  if len(jax.devices("cpu")) >= n:
    return
  if os.environ.get(_REEXEC_MARK):
    raise RuntimeError(f"could not start {n} host devices (XLA_FLAGS={flags!r}): run "
                       f"XLA_FLAGS={flag} python {' '.join(reexec_args)}")
  os.environ[_REEXEC_MARK] = "1"
  sys.stdout.flush()
  os.execv(sys.executable, [sys.executable, *reexec_args])
