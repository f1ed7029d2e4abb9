"""Multi-head attention behind one switch: `impl` = "xla" | "cudnn" | "pallas".

Layout everywhere is [B, T, H, K] (batch, sequence, heads, head dim). `segment_ids_BT` marks packed
documents (1-based, 0 = padding): a query attends only to keys of its own segment, and padding
attends to nothing (its output row is zero). The model calls `attention` and never knows which
implementation ran; an implementation that cannot honour a request raises instead of dropping it.
"""

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "pallas")
# A large finite value, not -inf: fully masked rows must give zeros, never NaN (exp(-inf - -inf)).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(segment_ids_BT, causal: bool, T: int, S: int):
  """Boolean [B|1, 1, T, S] mask: True where a query may attend to a key."""
  mask = jnp.ones((1, 1, T, S), dtype=bool)
  if causal:
    mask = jnp.tril(mask, k=S - T)
  if segment_ids_BT is not None:
    seg_q = segment_ids_BT[:, None, :, None]
    seg_k = segment_ids_BT[:, None, None, :]
    mask = mask & (seg_q == seg_k) & (seg_q > 0)
  return mask


def xla_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS=None, *, dropout_rate=0.0, dropout_rng=None):
  """Reference attention. Scores and softmax in fp32 (HF Phi upcasts too: fp16 overflows otherwise)."""
  K = q_BTHK.shape[-1]
  scores_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32)
  scores_BHTS = scores_BHTS / jnp.sqrt(jnp.float32(K))
  if mask_B1TS is not None:
    scores_BHTS = jnp.where(mask_B1TS, scores_BHTS, MASK_VALUE)
  probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
  if mask_B1TS is not None:
    # Rows with no visible key (padding) would otherwise spread uniform weight over masked keys.
    probs_BHTS = jnp.where(mask_B1TS.any(axis=-1, keepdims=True), probs_BHTS, 0.0)
  if dropout_rate > 0.0:
    keep_BHTS = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BHTS.shape)
    probs_BHTS = jnp.where(keep_BHTS, probs_BHTS / (1.0 - dropout_rate), 0.0)
  out_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK,
                        preferred_element_type=jnp.float32)
  return out_BTHK.astype(q_BTHK.dtype)


def attention(q_BTHK, k_BTHK, v_BTHK, *, causal: bool = True, segment_ids=None, impl: str = "xla",
              dropout_rate: float = 0.0, dropout_rng=None):
  """Self-attention over equal-length q and k. Returns [B, T, H, K] in q's dtype."""
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  if q_BTHK.shape != k_BTHK.shape or k_BTHK.shape != v_BTHK.shape:
    raise ValueError(f"q, k, v must share one [B, T, H, K] shape; got {q_BTHK.shape}, "
                     f"{k_BTHK.shape}, {v_BTHK.shape}")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("attention dropout needs a dropout_rng")
  if impl == "xla":
    T = q_BTHK.shape[1]
    mask = attention_mask(segment_ids, causal, T, T) if (causal or segment_ids is not None) else None
    return xla_attention(q_BTHK, k_BTHK, v_BTHK, mask, dropout_rate=dropout_rate,
                         dropout_rng=dropout_rng)
  raise NotImplementedError(f"attention impl {impl!r} is not built yet")
