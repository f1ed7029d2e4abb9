"""The fused LM-head cross-entropy equals the plain one (logits, softmax, sum), value and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phi1.losses import lm_head_cross_entropy


def reference(h, W, b, targets, weights, dtype):
  logits = jnp.einsum("btd,dv->btv", h.astype(dtype), W.astype(dtype),
                      preferred_element_type=jnp.float32) + b
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)


def inputs(B=3, T=24, D=16, V=50, seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  h = jax.random.normal(k[0], (B, T, D))
  W = jax.random.normal(k[1], (D, V)) * 0.5
  b = jax.random.normal(k[2], (V,))
  targets = jax.random.randint(k[3], (B, T), 0, V)
  weights = (jax.random.uniform(k[4], (B, T)) > 0.3).astype(jnp.float32)
  return h, W, b, targets, weights


@pytest.mark.parametrize("chunk", [1, 5, 8, 24, 1000])  # 5 -> 4 (a divisor of 24); 1000 -> 24
def test_value_and_gradients_match_the_plain_loss(chunk):
  h, W, b, t, w = inputs()
  ref, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(h, W, b, t, w, jnp.float32)
  fused = lambda h, W, b: lm_head_cross_entropy(h, W, b, t, w, chunk=chunk)
  val, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(h, W, b)
  np.testing.assert_allclose(val, ref, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
  # Not differentiated: the loss-only path gives the same value.
  np.testing.assert_allclose(jax.jit(fused)(h, W, b), ref, rtol=1e-5)


def test_bf16_compute_is_close_and_returns_float32():
  h, W, b, t, w = inputs(seed=1)
  ref = reference(h, W, b, t, w, jnp.float32)
  val = lm_head_cross_entropy(h, W, b, t, w, dtype=jnp.bfloat16)
  assert val.dtype == jnp.float32
  np.testing.assert_allclose(val, ref, rtol=2e-2)


def test_upstream_scale_reaches_every_gradient():
  """Loss scaling multiplies the cotangent: the fused backward must apply it to h, W and b."""
  h, W, b, t, w = inputs(seed=2)
  f = lambda h, W, b: lm_head_cross_entropy(h, W, b, t, w, chunk=8)
  g1 = jax.grad(f, argnums=(0, 1, 2))(h, W, b)
  g8 = jax.grad(lambda *a: 8.0 * f(*a), argnums=(0, 1, 2))(h, W, b)
  for a, c in zip(g1, g8):
    np.testing.assert_allclose(c, 8.0 * a, rtol=1e-6)
