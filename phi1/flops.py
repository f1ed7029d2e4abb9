"""Training FLOPs and model FLOPs utilisation (MFU).

FLOPs per token of a training step (forward + backward), the PaLM appendix B convention:
  6 * N            N = parameters in matmuls: every weight except embeddings, LayerNorms and biases;
                   the LM head is a matmul and counts.
  + 6 * L * T * D  attention scores and weighted sum: 12 * L * T * D for full attention, halved
                   because a causal mask needs only the lower triangle (what flash kernels compute).
MFU = achieved FLOP/s / peak FLOP/s. Peak: a table of known accelerators (dense bf16/fp16 tensor-core
numbers from the vendors' data sheets), else a measured float32 matmul rate on this host.
"""

import functools
import time

import jax
import jax.numpy as jnp

from phi1.model import Phi1Config

PEAK_FLOPS = {  # dense, per chip, bf16/fp16
    "A100": 312e12, "H100": 989e12, "H200": 989e12, "B200": 2250e12, "L4": 121e12, "A10": 125e12,
    "V100": 125e12,
}


def matmul_params(c: Phi1Config) -> int:
  mlp_matrices = 3 if c.mlp == "swiglu" else 2  # SwiGLU: gate, up and down
  per_layer = 4 * c.d_model * c.d_model + mlp_matrices * c.d_model * c.d_ff
  return c.n_layers * per_layer + c.d_model * c.vocab_size


def train_flops_per_token(c: Phi1Config, seq_len: int) -> float:
  return 6.0 * matmul_params(c) + 6.0 * c.n_layers * seq_len * c.d_model


@functools.cache
def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number came from)."""
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS.items():
    if name in kind:
      return peak, f"data sheet ({kind})"
  return measured_matmul_flops(), f"measured fp32 matmul ({device.platform})"


def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """Best-of-`repeats` float32 matmul rate on one device: the practical peak of a CPU."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def mfu(tokens_per_sec: float, c: Phi1Config, seq_len: int, n_devices: int) -> float:
  peak, _ = peak_flops_per_device()
  return tokens_per_sec * train_flops_per_token(c, seq_len) / (peak * n_devices)
