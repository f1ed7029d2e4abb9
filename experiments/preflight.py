"""What a sweep's dry run checks before any compute is spent: which keys tell its runs apart, which
input paths are missing, and how long a CPU-sized run takes on this machine.

  differing_keys(runs)   {run name: {dotted key: value}} for every key whose value is not the same
                         in all runs (what the runs are an experiment about)
  missing_paths(run)     data sources, eval sources, tokenizer and init_from that do not exist
                         (a path another run of the sweep writes counts as present: it comes first)
  cpu_wall_s(flops)      seconds on this host: FLOPs / (its measured fp32 matmul rate x MFU)
"""

from __future__ import annotations

import functools
import glob
import os

from phi1 import run_identity

# A run this small is a CPU run (under a day at ~1 TFLOP/s): its dry run adds a CPU wall estimate.
CPU_FLOPS_LIMIT = 1e17
# Measured on a 2-core CPU: cpu_sweep's d128 x 2-layer run trains at 20% of the host's matmul
# rate, a d256 x 4-layer model at 52% (README Results); the estimate takes the small-model end.
CPU_MFU = 0.2


def differing_keys(runs) -> dict[str, dict]:
  flat = {r.name: run_identity.flatten(r.config.to_dict()) for r in runs}
  keys = sorted(set().union(*flat.values()))
  varying = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
  return {name: {k: f.get(k) for k in varying} for name, f in flat.items()}


def _paths(config) -> list[tuple[str, str]]:
  out = []
  for i, source in enumerate(config.data.sources):
    path = source if isinstance(source, str) else source.get("path", "")
    out.append((f"data.sources[{i}]", path))
  out += [(f"data.eval_sources[{i}]", p if isinstance(p, str) else p.get("path", ""))
          for i, p in enumerate(config.data.get("eval_sources", []))]
  if config.data.get("tokenizer"):
    out.append(("data.tokenizer", config.data.tokenizer))
  if config.get("init_from"):
    out.append(("init_from", config.init_from))
  return [(k, str(p)) for k, p in out if p]


def missing_paths(run) -> list[str]:
  """'key: path' for every input that is neither on disk nor written by a run this one needs."""
  made_by = {str(run.workdir.parent / need) for need in run.needs}
  missing = []
  for key, path in _paths(run.config):
    if any(path == d or path.startswith(d + os.sep) for d in made_by):
      continue
    if not (os.path.exists(path) or glob.glob(path)):
      missing.append(f"{key}: {path}")
  return missing


def cpu_wall_s(flops: float, mfu: float = CPU_MFU) -> tuple[float, float]:
  """(seconds, the host's measured FLOP/s) for `flops` of training on this machine's CPU."""
  peak = _host_flops()
  return flops / (peak * mfu), peak


@functools.cache
def _host_flops() -> float:
  from phi1 import flops as flops_lib
  return flops_lib.measured_matmul_flops()
