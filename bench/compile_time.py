"""Compile time of the phi-1 (1.3B) train step, unrolled vs `scan_layers`, on CPU, abstract shapes.

Nothing is allocated: the step is lowered from `jax.ShapeDtypeStruct`s of the state and a batch
and compiled by XLA for the CPU. 24 unrolled blocks are 24 copies of the block in the program;
under `scan_layers` XLA sees one. GPU compiles scale the same way, only slower.

  python bench/compile_time.py [--preset phi1|phi1_small] [--batch 8] [--seq 2048] [--precision bf16]
Prints one JSON line per mode (lower and compile seconds, HLO size), then the ratio line.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from phi1 import config as config_lib, sharding, train  # noqa: E402
from phi1.model import Phi1Config  # noqa: E402


def compile_step(preset: str, scan_layers: bool, batch: int, seq: int, precision: str) -> dict:
  c = config_lib.base_config()
  c.model = config_lib.model_config(getattr(Phi1Config, preset)(scan_layers=scan_layers))
  c.batch_size, c.seq_len, c.precision, c.mesh = batch, seq, precision, "dp"
  trainer = train.Trainer(c, mesh=sharding.make_mesh("dp", jax.devices()[:1]))
  state = trainer.abstract_state_with_shardings()
  tokens = jax.ShapeDtypeStruct((batch, seq), np.int32, sharding=trainer.batch_sharding)
  mask = jax.ShapeDtypeStruct((batch, seq), np.float32, sharding=trainer.batch_sharding)
  abstract_batch = {"inputs": tokens, "targets": tokens, "loss_mask": mask}
  start = time.perf_counter()
  with sharding.activation_sharding(trainer.mesh, trainer.rules):
    lowered = trainer._train_step.lower(state, abstract_batch)
  lowered_s = time.perf_counter() - start
  hlo_chars = len(lowered.as_text())
  start = time.perf_counter()
  lowered.compile()
  compile_s = time.perf_counter() - start
  return {"preset": preset, "scan_layers": scan_layers, "lower_s": round(lowered_s, 2),
          "compile_s": round(compile_s, 2), "stablehlo_chars": hlo_chars}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="phi1", choices=("phi1", "phi1_small"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
  args = parser.parse_args()
  results = [compile_step(args.preset, scan, args.batch, args.seq, args.precision)
             for scan in (False, True)]
  for r in results:
    print(json.dumps(r))
  unrolled, scanned = results
  print(json.dumps({"name": "compile_time", "ours": scanned["compile_s"],
                    "peer": unrolled["compile_s"],
                    "ratio": round(scanned["compile_s"] / max(unrolled["compile_s"], 1e-9), 3),
                    "unit": "s (scan_layers vs unrolled, lower excluded)",
                    "machine": f"{os.cpu_count()}-core {platform.machine()} CPU"}))


if __name__ == "__main__":
  main()
