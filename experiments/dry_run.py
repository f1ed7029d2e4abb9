"""A sweep's dry run: each run's compute with the arithmetic shown (tokens, FLOPs by phi1/flops.py,
GPU-hours on a GPU at an MFU, the MFU the paper's hours imply), what tells the runs apart, missing
inputs and, for CPU-sized runs, the wall time on this machine (experiments/preflight.py).

  estimate(run, gpu, mfu)   Estimate: params, tokens, FLOPs, GPU-hours
  dry_run(runs, ...)        prints every run's block and the totals
"""

from __future__ import annotations

import dataclasses

from phi1 import config as config_lib, run_identity
from experiments import preflight
from experiments.runs import Run


@dataclasses.dataclass
class Estimate:
  params: int
  matmul_params: int
  tokens: int
  flops_per_token: float
  flops: float
  gpu: str
  peak: float
  mfu: float

  @property
  def gpu_hours(self) -> float:
    return self.flops / (self.peak * self.mfu) / 3600


def estimate(run: Run, gpu: str = "A100", mfu: float = 0.4) -> Estimate:
  from phi1 import flops
  if gpu not in flops.PEAK_FLOPS:
    raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(flops.PEAK_FLOPS)}")
  if not 0 < mfu <= 1:
    raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
  c, model = run.config, config_lib.phi1_config(run.config)
  tokens = int(c.steps) * int(c.batch_size) * int(c.seq_len)
  # Counted on the model the run builds (its model_fn), not the stock one.
  params, matmul = flops.param_counts(model, c.model_fn)
  per_token = flops.train_flops_per_token(model, c.seq_len, c.model_fn)
  return Estimate(params=params, matmul_params=matmul,
                  tokens=tokens, flops_per_token=per_token, flops=tokens * per_token, gpu=gpu,
                  peak=flops.PEAK_FLOPS[gpu], mfu=mfu)


def explain(run: Run, e: Estimate, gpus: int = 8) -> str:
  c, m = run.config, run.config.model
  attention = 6.0 * m.n_layers * c.seq_len * m.d_model
  hours = e.gpu_hours
  return "\n".join([
      f"{run.name}  ({run.workdir})",
      f"  model       {m.n_layers} layers x d_model {m.d_model} (d_ff {m.d_ff}, {m.n_heads} heads): "
      f"{e.params:,} params, N = {e.matmul_params:,} in matmuls",
      f"  tokens      {c.steps:,} steps x {c.batch_size:,} seq x {c.seq_len:,} tokens = "
      f"{e.tokens:,} ({_human(e.tokens)})",
      f"  FLOPs/token 6 x N + 6 x L x T x d = 6 x {e.matmul_params:.4g} + 6 x {m.n_layers} x "
      f"{c.seq_len} x {m.d_model} = {6.0 * e.matmul_params:.4g} + {attention:.4g} = "
      f"{e.flops_per_token:.4g}",
      f"  FLOPs       {e.tokens:.4g} tokens x {e.flops_per_token:.4g} = {e.flops:.4g}",
      f"  {e.gpu}-hours  {e.flops:.4g} / ({e.peak:.4g} FLOP/s x MFU {e.mfu:g}) / 3600 s = "
      f"{hours:,.4g}  (~{hours / gpus:,.4g} h = {hours / gpus / 24:.3g} days on {gpus} GPUs)",
  ])


def implied_mfu(flops_total: float, gpu_hours: float, gpu: str = "A100") -> float:
  """The MFU at which `flops_total` takes `gpu_hours` on `gpu`."""
  from phi1 import flops
  return flops_total / (gpu_hours * 3600 * flops.PEAK_FLOPS[gpu])


def _paper_line(run: Run, e: Estimate) -> str:
  if "a100_hours" not in run.paper:
    return ""
  from phi1 import flops
  hours, peak = float(run.paper["a100_hours"]), flops.PEAK_FLOPS["A100"]  # the paper's GPU
  return (f"\n  paper       {hours:,.0f} A100-hours ({run.paper.get('what', '')}): implies MFU = "
          f"{e.flops:.4g} / ({hours:,.0f} h x 3600 s x {peak:.4g}) = "
          f"{implied_mfu(e.flops, hours):.3f}")


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.2g} s"
  return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def _short_value(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _human(n: float) -> str:
  for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.3g}{unit}"
  return f"{n:g}"


def memory_line(run: Run, devices, device_memory_gb: float) -> str:
  """One compile of the run's train step for `devices` (phi1/memory_plan.py): its per-device bytes
  against `device_memory_gb`."""
  from phi1 import memory_plan
  p = memory_plan.plan(run.config, devices, device_memory_gb * memory_plan.GB, search=False)
  verdict = "fits" if p.fits else "does NOT fit (phi1 plan --device-memory-gb finds what does)"
  return (f"  memory      {p.step.total / memory_plan.GB:.3g} GB per device of "
          f"{device_memory_gb:g} GB: {verdict}; micro-batch {p.step.micro_batch} x grad_accum "
          f"{p.step.grad_accum} on {len(devices)} devices (XLA:{p.backend}'s plan of the compiled "
          f"step; a GPU's may differ)")


def dry_run(runs: list[Run], *, gpu="A100", mfu=0.4, gpus=8, reference_gpu_hours=None,
            plan_devices=None, device_memory_gb=None, log=print) -> list[Estimate]:
  """With `plan_devices` (host devices standing in for the GPUs), each run's step is compiled and
  its per-device memory checked against `device_memory_gb`."""
  from phi1 import flops
  log(f"{runs[0].experiment}: {len(runs)} run(s); compute by phi1/flops.py (6N + causal "
      f"attention per token, forward + backward; remat recompute not counted), on {gpu} "
      f"({flops.PEAK_FLOPS[gpu] / 1e12:g} TFLOP/s dense bf16/fp16 peak) at MFU {mfu:g}\n")
  estimates, missing = [], 0
  differs = preflight.differing_keys(runs) if len(runs) > 1 else {}
  if differs and next(iter(differs.values())):
    log("the runs differ in: " + ", ".join(next(iter(differs.values()))) + "\n")
  for run in runs:
    e = estimate(run, gpu, mfu)
    estimates.append(e)
    status = run_identity.status(run.workdir, run.config)
    needs = f"; after {', '.join(run.needs)}" if run.needs else ""
    lines = [explain(run, e, gpus) + _paper_line(run, e)]
    if differs.get(run.name):
      lines.append("  differs     " + ", ".join(f"{k}={_short_value(v)}"
                                                for k, v in differs[run.name].items()))
    if e.flops < preflight.CPU_FLOPS_LIMIT:
      seconds, peak = preflight.cpu_wall_s(e.flops)
      lines.append(f"  CPU wall    {e.flops:.4g} / ({peak / 1e9:.3g} GFLOP/s measured here x MFU "
                   f"{preflight.CPU_MFU:g}) = {_duration(seconds)} (compiles and evals extra)")
    if plan_devices:
      lines.append(memory_line(run, plan_devices, device_memory_gb))
    problems = preflight.missing_paths(run)
    missing += len(problems)
    lines += [f"  MISSING     {p}" for p in problems]
    log("\n".join(lines) + f"\n  status      {status}{needs}\n")
  if missing:
    log(f"{missing} input path(s) missing (MISSING above): create them or fix the config first\n")
  total_flops = sum(e.flops for e in estimates)
  total_hours = sum(e.gpu_hours for e in estimates)
  log(f"total: {len(runs)} run(s), {_human(sum(e.tokens for e in estimates))} tokens, "
      f"{total_flops:.4g} FLOPs, {total_hours:,.4g} {gpu}-hours at MFU {mfu:g}")
  if reference_gpu_hours:
    implied = implied_mfu(total_flops, reference_gpu_hours, gpu)
    log(f"reference: {reference_gpu_hours:g} {gpu}-hours for these FLOPs means MFU = "
        f"{total_flops:.4g} / ({reference_gpu_hours:g} h x 3600 s x {flops.PEAK_FLOPS[gpu]:.4g}) "
        f"= {implied:.3f}")
  return estimates

