"""Mixed-precision policies and dynamic loss scaling.

  fp32  everything in float32.
  bf16  float32 parameters and optimizer state, bfloat16 matmuls; no loss scaling (bf16 has fp32's
        exponent range). Every anchor project's default.
  fp16  the paper's choice (§2.3, DeepSpeed fp16): float32 master weights, float16 matmuls, and
        dynamic loss scaling inside the jitted step: the loss is multiplied by `scale` so small
        gradients survive fp16; a step whose gradients are not finite is skipped (parameters and
        optimizer state unchanged) and the scale halves; after `period` good steps it doubles.
Softmax, logits and the loss are float32 under every policy (phi1/attention.py, phi1/model.py).
"""

import dataclasses

import jax
import jax.numpy as jnp

COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def compute_dtype(policy: str) -> str:
  if policy not in COMPUTE_DTYPE:
    raise ValueError(f"precision must be one of {sorted(COMPUTE_DTYPE)}, got {policy!r}")
  return COMPUTE_DTYPE[policy]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossScale:
  """Dynamic loss scale state; `period`, `factor` and bounds are static configuration."""
  scale: jax.Array  # float32 scalar
  good_steps: jax.Array  # int32 scalar: finite steps since the last change
  period: int = dataclasses.field(default=1000, metadata=dict(static=True))
  factor: float = dataclasses.field(default=2.0, metadata=dict(static=True))
  min_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
  max_scale: float = dataclasses.field(default=2.0**24, metadata=dict(static=True))
  dynamic: bool = dataclasses.field(default=True, metadata=dict(static=True))

  @classmethod
  def create(cls, policy: str, init_scale: float = 2.0**15, period: int = 1000) -> "LossScale":
    dynamic = policy == "fp16"
    return cls(scale=jnp.float32(init_scale if dynamic else 1.0), good_steps=jnp.int32(0),
               period=period, dynamic=dynamic)

  def scale_loss(self, loss):
    return loss * self.scale if self.dynamic else loss

  def unscale(self, grads):
    if not self.dynamic:
      return grads
    return jax.tree.map(lambda g: g.astype(jnp.float32) / self.scale, grads)

  def adjust(self, grads_finite) -> "LossScale":
    if not self.dynamic:
      return self
    grow = grads_finite & (self.good_steps + 1 >= self.period)
    grown = jnp.maximum(jnp.minimum(self.scale * self.factor, self.max_scale), self.scale)
    shrunk = jnp.maximum(self.scale / self.factor, self.min_scale)
    scale = jnp.where(grads_finite, jnp.where(grow, grown, self.scale), shrunk)
    good = jnp.where(grads_finite & ~grow, self.good_steps + 1, 0)
    return dataclasses.replace(self, scale=scale, good_steps=good.astype(jnp.int32))


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def select_tree(pred, on_true, on_false):
  """Elementwise `pred ? on_true : on_false` over matching pytrees (skips a non-finite step)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
