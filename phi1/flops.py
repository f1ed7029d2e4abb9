"""Training FLOPs and model FLOPs utilisation (MFU).

FLOPs per token of a training step (forward + backward), the PaLM appendix B convention:
  6 * N            N = parameters in matmuls: every weight except embeddings, LayerNorms and biases;
                   the LM head is a matmul and counts. N is counted on the model the run builds
                   (its `model_fn`, phi1/model_fn.py), abstractly: jax.eval_shape allocates nothing.
  + 6 * L * T * D  attention scores and weighted sum: 12 * L * T * D for full attention, halved
                   because a causal mask needs only the lower triangle (what flash kernels compute).
MFU = achieved FLOP/s / peak FLOP/s. Peak: a table of known accelerators (dense bf16/fp16 tensor-core
numbers from the vendors' data sheets), else a measured float32 matmul rate on this host.
"""

import functools
import math
import time

import jax
import jax.numpy as jnp

from phi1.model import Phi1Config

PEAK_FLOPS = {  # dense, per chip, bf16/fp16
    "A100": 312e12, "H100": 989e12, "H200": 989e12, "B200": 2250e12, "L4": 121e12, "A10": 125e12,
    "V100": 125e12,
}


@functools.cache
def param_counts(c: Phi1Config, model_fn: str = "") -> tuple[int, int]:
  """(parameters, parameters in matmuls) of the model `model_fn` ("" is Phi1) builds from `c`.

  Matmul weights are the linear `kernel`s (every projection, gate and the LM head); embeddings,
  LayerNorm scales and biases are not. Stacked layers (scan_layers) count once per layer."""
  from flax import nnx
  from phi1 import model_fn as model_fn_lib
  build = model_fn_lib.resolve(model_fn)
  abstract = nnx.eval_shape(lambda: build(c, rngs=nnx.Rngs(0)))
  total = matmul = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]:
    size = math.prod(leaf.shape)
    total += size
    names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    matmul += size if names[-1] == "kernel" else 0
  return total, matmul


def matmul_params(c: Phi1Config, model_fn: str = "") -> int:
  return param_counts(c, model_fn)[1]


def train_flops_per_token(c: Phi1Config, seq_len: int, model_fn: str = "") -> float:
  return 6.0 * matmul_params(c, model_fn) + 6.0 * c.n_layers * seq_len * c.d_model


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


def mfu(tokens_per_sec: float, c: Phi1Config, seq_len: int, n_devices: int,
        model_fn: str = "") -> float:
  peak, _ = peak_flops_per_device()
  return tokens_per_sec * train_flops_per_token(c, seq_len, model_fn) / (peak * n_devices)
