"""Calibrate `phi1 plan` on a GPU: the CPU-compiled plan, the GPU compiler's own plan and the
device's measured peak, for one train step of the paper's recipe on one device.

  python bench/plan_calibration.py --preset phi1_small|phi1 [--batch N] [--steps 2]

The config is the paper's pretraining recipe (experiments/phi1_pretrain.py, phi1_small_pretrain.py:
fp16, remat "dots", dropout 0.1) on one device, scan_layers, a batch of --batch sequences of
2,048, with XLA attention for the three-way comparison (the CPU plan cannot compile the GPU
kernel), then once more with the flash kernel ("pallas": GPU plan and peak only). `phi1 plan`
compiles the same step on a host CPU device. One JSON line per attention impl:
{"preset", "attention", "cpu_plan_bytes", "gpu_plan_bytes", "peak_bytes", "peak_over_cpu_plan"}.
Run each preset in its own process: the device's peak counter only grows, so the flash kernel
(the smaller) runs first and the XLA step's peak is the larger of the two. JAX_PLATFORMS must
include cpu (cuda,cpu) for the plan's host device.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from phi1 import config as config_lib, memory_plan  # noqa: E402

EXPERIMENTS = {"phi1_small": "experiments/phi1_small_pretrain.py",
               "phi1": "experiments/phi1_pretrain.py"}


def recipe(preset: str, batch: int, attention: str):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = config_lib.load(os.path.join(root, EXPERIMENTS[preset]))
  c.batch_size, c.grad_accum, c.mesh = batch, 1, "dp"
  c.model.scan_layers, c.model.attention_impl = True, attention
  return c


def measured(config, device) -> tuple[int, int, float]:
  """(GPU compiler's planned bytes, device peak bytes after the steps, last loss)."""
  step, trainer = memory_plan.compile_step(config, [device])
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.model.vocab_size,
                        (config.batch_size, config.seq_len + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_mask": np.ones((config.batch_size, config.seq_len), np.float32)}
  for _ in range(2):
    state, metrics = trainer.step(state, batch)
  loss = float(metrics["loss"])
  peak = int(device.memory_stats()["peak_bytes_in_use"])
  del state
  return step.total, peak, loss


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(EXPERIMENTS), required=True)
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args()
  gpu = jax.devices()[0]
  if gpu.platform == "cpu":
    sys.exit("bench/plan_calibration.py measures a GPU's peak; the backend here is CPU")
  cpu_plan, _ = memory_plan.compile_step(recipe(args.preset, args.batch, "xla"),
                                         jax.devices("cpu")[:1])
  for attention in ("pallas", "xla"):
    try:
      gpu_plan, peak, loss = measured(recipe(args.preset, args.batch, attention), gpu)
    except Exception as e:  # noqa: BLE001 - an OOM is a result here, not a crash
      print(json.dumps({"preset": args.preset, "attention": attention,
                        "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
      continue
    print(json.dumps({
        "preset": args.preset, "attention": attention, "batch": args.batch, "seq": 2048,
        "cpu_plan_bytes": cpu_plan.total if attention == "xla" else None,
        "gpu_plan_bytes": gpu_plan, "peak_bytes": peak, "loss": loss,
        "peak_over_cpu_plan": round(peak / cpu_plan.total, 3) if attention == "xla" else None,
        "peak_over_gpu_plan": round(peak / gpu_plan, 3), "device": gpu.device_kind}), flush=True)


if __name__ == "__main__":
  main()
