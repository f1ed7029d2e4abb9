"""Next-token cross-entropy fused with the LM head, one chunk of the sequence at a time.

With phi-1's 51,200-token vocabulary the logits dominate training memory and bandwidth: one
device's 8 x 2048 tokens give 3.4 GB of float32 logits, written, re-read by the softmax, and again
by the backward pass. Here the logits of only `chunk` positions exist at once, and the forward
pass of the differentiated loss also produces the gradients (the loss is a sum, so d loss / d
logits = softmax - onehot is known as soon as the logits are), so the backward pass is three
scalings. Same idea as the "fused linear cross-entropy" of Liger-Kernel; exact, not approximate.

Shapes: h_BTD final hidden states, W_DV / b_V the LM head, targets_BT, weights_BT (the loss mask).
The chunks run along T, which no mesh axis splits, so batch (and vocab) sharding carry through.
"""

import functools

import jax
import jax.numpy as jnp


def _chunk_size(T: int, target: int) -> int:
  return max(d for d in range(1, min(T, target) + 1) if T % d == 0)


def _chunks(x, chunk):
  """[B, T, ...] -> [T / chunk, B, chunk, ...] for lax.scan."""
  B, T = x.shape[:2]
  return jnp.swapaxes(x.reshape(B, T // chunk, chunk, *x.shape[2:]), 0, 1)


def _logits(h_BcD, W_DV, b_V, dtype):
  return jnp.einsum("bcd,dv->bcv", h_BcD.astype(dtype), W_DV.astype(dtype),
                    preferred_element_type=jnp.float32) + b_V


def _nll(logits_BcV, targets_Bc):
  lse_Bc = jax.nn.logsumexp(logits_BcV, axis=-1)
  target_logit_Bc = jnp.take_along_axis(logits_BcV, targets_Bc[..., None], axis=-1)[..., 0]
  return lse_Bc, lse_Bc - target_logit_Bc


def _loss_only(h_BTD, W_DV, b_V, targets_BT, weights_BT, dtype, chunk):
  def body(total, xs):
    h_BcD, t_Bc, w_Bc = xs
    _, nll_Bc = _nll(_logits(h_BcD, W_DV, b_V, dtype), t_Bc)
    return total + jnp.sum(nll_Bc * w_Bc), None
  xs = (_chunks(h_BTD, chunk), _chunks(targets_BT, chunk), _chunks(weights_BT, chunk))
  total, _ = jax.lax.scan(body, jnp.float32(0.0), xs)
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(h_BTD, W_DV, b_V, targets_BT, weights_BT, dtype, chunk):
  return _loss_only(h_BTD, W_DV, b_V, targets_BT, weights_BT, dtype, chunk)


def _fused_fwd(h_BTD, W_DV, b_V, targets_BT, weights_BT, dtype, chunk):
  V = W_DV.shape[1]

  def body(carry, xs):
    total, dW_DV, db_V = carry
    h_BcD, t_Bc, w_Bc = xs
    logits_BcV = _logits(h_BcD, W_DV, b_V, dtype)
    # One exp per logit serves both the loss and its gradient (logsumexp + softmax would take two).
    max_Bc = jax.lax.stop_gradient(jnp.max(logits_BcV, axis=-1))
    exp_BcV = jnp.exp(logits_BcV - max_Bc[..., None])
    sum_Bc = jnp.sum(exp_BcV, axis=-1)
    target_logit_Bc = jnp.take_along_axis(logits_BcV, t_Bc[..., None], axis=-1)[..., 0]
    nll_Bc = max_Bc + jnp.log(sum_Bc) - target_logit_Bc
    # d(sum w * nll) / d logits = w * (softmax - onehot(target))
    is_target_BcV = jnp.arange(V)[None, None, :] == t_Bc[..., None]
    g_BcV = (exp_BcV * (w_Bc / sum_Bc)[..., None] - jnp.where(is_target_BcV, w_Bc[..., None], 0.0))
    g_BcV = g_BcV.astype(dtype)
    dh_BcD = jnp.einsum("bcv,dv->bcd", g_BcV, W_DV.astype(dtype),
                        preferred_element_type=jnp.float32)
    dW_DV = dW_DV + jnp.einsum("bcd,bcv->dv", h_BcD.astype(dtype), g_BcV,
                               preferred_element_type=jnp.float32)
    db_V = db_V + jnp.sum(g_BcV, axis=(0, 1), dtype=jnp.float32)
    return (total + jnp.sum(nll_Bc * w_Bc), dW_DV, db_V), dh_BcD

  init = (jnp.float32(0.0), jnp.zeros(W_DV.shape, jnp.float32), jnp.zeros((V,), jnp.float32))
  xs = (_chunks(h_BTD, chunk), _chunks(targets_BT, chunk), _chunks(weights_BT, chunk))
  (total, dW_DV, db_V), dh_nBcD = jax.lax.scan(body, init, xs)
  B, T, D = h_BTD.shape
  dh_BTD = jnp.swapaxes(dh_nBcD, 0, 1).reshape(B, T, D)
  return total, (dh_BTD.astype(h_BTD.dtype), dW_DV.astype(W_DV.dtype), db_V.astype(b_V.dtype))


def _fused_bwd(dtype, chunk, grads, g):
  dh_BTD, dW_DV, db_V = grads
  return g * dh_BTD, g * dW_DV, g * db_V, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def lm_head_cross_entropy(h_BTD, W_DV, b_V, targets_BT, weights_BT, *, dtype=jnp.float32,
                          chunk: int = 128):
  """sum(weights * -log softmax(h @ W + b)[target]) in float32, differentiable in h, W and b.

  `dtype` is the matmul compute dtype (the precision policy's); logits, softmax and the sum are
  float32. `chunk` bounds the sequence positions whose logits exist at once (a divisor of T).
  """
  chunk = _chunk_size(h_BTD.shape[1], chunk)
  return _fused(h_BTD, W_DV, b_V, targets_BT.astype(jnp.int32),
                weights_BT.astype(jnp.float32), jnp.dtype(dtype), chunk)
