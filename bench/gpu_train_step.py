"""Train-step throughput of phi-1-small (350M) and phi-1 (1.3B) on one GPU: bf16 and fp16, xla vs
pallas attention, in tokens/s and MFU against the card's data-sheet peak (phi1/flops.py).

  python bench/gpu_train_step.py [--steps 5] [--presets phi1_small,phi1]
  python bench/gpu_train_step.py --smoke     # CPU: a tiny model, to check the script itself

Each case builds the real Trainer (one-device mesh, scan_layers so the 24-block step compiles
once), compiles and runs one warm step, then times `--steps` steps. One JSON line per case; the
last line is the summary {"name", "ours" (best pallas tokens/s of phi-1), "peer" (xla), "ratio"}.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from phi1 import config as config_lib, flops, sharding, train  # noqa: E402
from phi1.model import Phi1Config  # noqa: E402

# Per-device micro-batch and remat that fit an 80 GB card with fp32 master weights and AdamW.
SHAPES = {"phi1_small": dict(batch=8, remat="dots"), "phi1": dict(batch=4, remat="full")}


def one_case(preset: str, precision: str, impl: str, steps: int, smoke: bool) -> dict:
  seq = 128 if smoke else 2048
  shape = dict(batch=2, remat="none") if smoke else SHAPES[preset]
  model = (Phi1Config.tiny(attention_impl=impl, scan_layers=True) if smoke else
           getattr(Phi1Config, preset)(attention_impl=impl, scan_layers=True, remat=shape["remat"]))
  c = config_lib.base_config()
  c.model = config_lib.model_config(model)
  c.batch_size, c.seq_len, c.precision, c.mesh = shape["batch"], seq, precision, "dp"
  c.optimizer.warmup_steps = 1
  trainer = train.Trainer(c, mesh=sharding.make_mesh("dp", jax.devices()[:1]))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.vocab_size, (shape["batch"], seq + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_mask": np.ones((shape["batch"], seq), np.float32)}
  state = trainer.init_state()
  start = time.perf_counter()
  state, m = trainer.step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, m = trainer.step(state, batch)
  jax.block_until_ready(m)
  tokens_per_sec = steps * shape["batch"] * seq / (time.perf_counter() - start)
  peak, peak_source = flops.peak_flops_per_device()
  return {"preset": "tiny" if smoke else preset, "precision": precision, "attention": impl,
          "batch": shape["batch"], "seq": seq, "remat": shape["remat"],
          "tokens_per_sec": round(tokens_per_sec, 1),
          "mfu": round(flops.mfu(tokens_per_sec, model, seq, 1), 4), "peak": peak_source,
          "first_step_s": round(compile_s, 1), "loss": float(m["loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--presets", default="phi1_small,phi1")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args()
  if jax.default_backend() == "cpu" and not args.smoke:
    sys.exit("bench/gpu_train_step.py needs a GPU (use --smoke on CPU to check the script)")
  results = []
  for preset in args.presets.split(","):
    for precision in ("bf16", "fp16"):
      for impl in ("xla", "pallas"):
        try:
          result = one_case(preset, precision, impl, args.steps, args.smoke)
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
          result = {"preset": preset, "precision": precision, "attention": impl,
                    "error": f"{type(e).__name__}: {str(e)[:300]}"}
        results.append(result)
        print(json.dumps(result), flush=True)
  ok = [r for r in results if "tokens_per_sec" in r]
  best = lambda impl: max((r["tokens_per_sec"] for r in ok if r["attention"] == impl
                           and r["preset"] == ok[-1]["preset"]), default=0.0) if ok else 0.0
  print(json.dumps({"name": "gpu_train_step", "ours": best("pallas"), "peer": best("xla"),
                    "ratio": round(best("pallas") / max(best("xla"), 1e-9), 3),
                    "unit": "tokens/s (pallas vs xla attention, largest preset)",
                    "machine": jax.devices()[0].device_kind, "failed": len(results) - len(ok)}))
  return 1 if len(ok) < len(results) else 0


if __name__ == "__main__":
  sys.exit(main())
