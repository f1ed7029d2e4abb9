"""Multi-head attention behind one switch: `impl` = "xla" | "cudnn" | "pallas".

Layout everywhere is [B, T, H, K] (batch, sequence, heads, head dim). `segment_ids_BT` marks packed
documents (1-based, 0 = padding): a query attends only to keys of its own segment, and padding
attends to nothing (its output row is zero). The model calls `attention` and never knows which
implementation ran; an implementation that cannot honour a request raises instead of dropping it.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from phi1 import sharding
from phi1.kernels import flash_attention as flash

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


def xla_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS=None, *, dropout_rate=0.0, dropout_rng=None,
                  return_probs=False):
  """Reference attention. Scores and softmax in fp32 (HF Phi upcasts too: fp16 overflows otherwise).

  With `return_probs`, returns (out_BTHK, probs_BHTS), the probabilities before dropout."""
  K = q_BTHK.shape[-1]
  scores_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32)
  scores_BHTS = scores_BHTS / jnp.sqrt(jnp.float32(K))
  if mask_B1TS is not None:
    scores_BHTS = jnp.where(mask_B1TS, scores_BHTS, MASK_VALUE)
  probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
  if mask_B1TS is not None:
    # Rows with no visible key (padding) would otherwise spread uniform weight over masked keys.
    probs_BHTS = jnp.where(mask_B1TS.any(axis=-1, keepdims=True), probs_BHTS, 0.0)
  softmax_BHTS = probs_BHTS
  if dropout_rate > 0.0:
    keep_BHTS = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BHTS.shape)
    probs_BHTS = jnp.where(keep_BHTS, probs_BHTS / (1.0 - dropout_rate), 0.0)
  out_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK,
                        preferred_element_type=jnp.float32)
  if return_probs:
    return out_BTHK.astype(q_BTHK.dtype), softmax_BHTS
  return out_BTHK.astype(q_BTHK.dtype)


def attention(q_BTHK, k_BTHK, v_BTHK, *, causal: bool = True, segment_ids=None, impl: str = "xla",
              dropout_rate: float = 0.0, dropout_rng=None):
  """Self-attention over equal-length q and k. Returns [B, T, H, K] in q's dtype.

  impl: "xla" (reference; the only one with attention dropout), "pallas" (our flash kernel,
  phi1/kernels/flash_attention.py; interpreted on CPU), "cudnn" (GPU only, bf16/fp16, no packed
  segment ids). Inside `sharding.activation_sharding` the kernel impls run under shard_map.
  """
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
  if impl == "pallas" and dropout_rate > 0.0:
    raise ValueError(f"attention dropout (rate {dropout_rate}) exists only on impl='xla': the "
                     "Pallas kernel has none. Use impl='xla' or set attn_dropout=0 (as the "
                     "released phi-1 config does).")
  # A kernel is one opaque call XLA cannot partition: under the trainer's mesh it runs per shard.
  active = sharding.active()  # (mesh, rules) while the trainer traces, else None
  if active is not None and not jax.sharding.get_abstract_mesh().manual_axes:
    mesh, rules = active
    sharded = sharded_attention(mesh, rules.get("batch"), rules.get("act_heads"))
    return sharded(q_BTHK, k_BTHK, v_BTHK, causal=causal, segment_ids=segment_ids, impl=impl,
                   dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  if impl == "pallas":
    return flash.flash_attention(q_BTHK, k_BTHK, v_BTHK, segment_ids, causal=causal)
  return cudnn_attention(q_BTHK, k_BTHK, v_BTHK, causal=causal, segment_ids=segment_ids,
                         dropout_rate=dropout_rate)


def cudnn_attention(q_BTHK, k_BTHK, v_BTHK, *, causal: bool, segment_ids=None,
                    dropout_rate: float = 0.0):
  """cuDNN's fused flash attention through `jax.nn.dot_product_attention`.

  That API takes a causal flag and per-row padding lengths, but neither dropout nor packed
  documents (its segment layout, offsets per row, is not exposed), and cuDNN's kernel wants
  fp16/bf16. Anything it cannot honour raises here rather than being dropped.
  """
  if dropout_rate > 0.0:
    raise ValueError("impl='cudnn' cannot apply attention dropout (jax.nn.dot_product_attention "
                     "has no dropout); use impl='xla' for attention dropout.")
  if segment_ids is not None:
    raise ValueError("impl='cudnn' cannot mask packed documents: jax.nn.dot_product_attention's "
                     "cuDNN path takes padding lengths, not segment ids. Use impl='pallas' (or "
                     "'xla') for packed sequences.")
  if q_BTHK.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"impl='cudnn' runs in bf16 or fp16 only, got {q_BTHK.dtype}; cast q, k, v "
                     "or use impl='pallas'/'xla'.")
  if jax.default_backend() not in ("gpu", "cuda"):
    raise RuntimeError(f"impl='cudnn' needs an NVIDIA GPU; the JAX backend here is "
                       f"{jax.default_backend()!r}. Use impl='xla' or impl='pallas' instead.")
  return jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, is_causal=causal,
                                      implementation="cudnn")


def sharded_attention(mesh, batch_axes=("data", "fsdp"), head_axis="tensor"):
  """`attention` run per device under `jax.shard_map`, split over batch and heads.

  A Pallas kernel is one opaque call that XLA cannot partition, so inside a sharded jit it must
  see only its local [B/n, T, H/m, K] block. Attention never mixes batch rows or heads, so no
  communication is needed. Returns a function with `attention`'s signature; q, k, v must already
  be laid out as P(batch_axes, None, head_axis, None) (otherwise XLA reshards them first).
  `attention` does this by itself for the kernel impls inside `sharding.activation_sharding`,
  taking the axes of the logical names "batch" and "act_heads".
  """
  qkv_spec = P(batch_axes, None, head_axis, None)
  seg_spec = P(batch_axes, None)
  split_axes = [a for a in (*_as_tuple(batch_axes), *_as_tuple(head_axis)) if a is not None]

  def sharded(q_BTHK, k_BTHK, v_BTHK, *, causal=True, segment_ids=None, impl="xla",
              dropout_rate=0.0, dropout_rng=None):
    def local(q, k, v, *extras):
      extras = list(extras)
      seg = extras.pop(0) if segment_ids is not None else None
      rng = extras.pop(0) if dropout_rng is not None else None
      if rng is not None:
        # Each block of batch rows and heads draws its own dropout mask.
        for axis in split_axes:
          rng = jax.random.fold_in(rng, lax.axis_index(axis))
      return attention(q, k, v, causal=causal, segment_ids=seg, impl=impl,
                       dropout_rate=dropout_rate, dropout_rng=rng)

    args, specs = [q_BTHK, k_BTHK, v_BTHK], [qkv_spec] * 3
    if segment_ids is not None:
      args.append(segment_ids)
      specs.append(seg_spec)
    if dropout_rng is not None:
      args.append(dropout_rng)
      specs.append(P())
    # check_vma=False: pallas_call's outputs carry no varying-axes annotation, and the body is
    # purely per-shard (no collectives), so the check has nothing to verify.
    return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                         check_vma=False)(*args)

  return sharded


def _as_tuple(axes):
  return axes if isinstance(axes, tuple) else (axes,)
