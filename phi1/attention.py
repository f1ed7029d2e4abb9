"""Multi-head attention behind one switch: `impl` = "xla" | "cudnn" | "pallas" | "auto".

Layout everywhere is [B, T, H, K] (batch, sequence, heads, head dim). `segment_ids_BT` marks packed
documents (1-based, 0 = padding): a query attends only to keys of its own segment, and padding
attends to nothing (its output row is zero). The model calls `attention` and never knows which
implementation ran; an implementation that cannot honour a request raises instead of dropping it.
"auto" is the flash kernel where it compiles (GPU) and XLA elsewhere (`resolve_impl`).

Attention dropout has one definition for every impl that has it: the keep-mask is a hash of
(seed, batch row, head, query, key) (phi1/kernels/flash_attention.py), the seed drawn from the
caller's key. The XLA path builds the mask as an array, the kernel regenerates it tile by tile, so
one key gives one mask on both, sharded or not.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from phi1 import sharding
from phi1.kernels import flash_attention as flash

IMPLS = ("xla", "cudnn", "pallas", "auto")
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


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """"auto" -> "pallas" on a GPU backend, "xla" elsewhere (the kernel is interpreted on CPU:
  correct but slow); any other impl is returned as is."""
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  return "pallas" if backend in ("gpu", "cuda", "rocm") else "xla"


def dropout_stream(dropout_rng, n_heads: int, batch_offset=0, head_offset=0):
  """The kernel's int32[4] dropout stream for a key (see flash.dropout_stream)."""
  return flash.dropout_stream(flash.seed_from_key(dropout_rng), batch_offset, head_offset, n_heads)


def xla_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS=None, *, dropout_rate=0.0, dropout_rng=None,
                  return_probs=False, dropout_stream_4=None):
  """Reference attention. Scores and softmax in fp32 (HF Phi upcasts too: fp16 overflows otherwise).

  Dropout uses the kernel's hashed mask: from `dropout_stream_4` if given, else from
  `dropout_rng` (the whole array's indices). With `return_probs`, returns (out_BTHK, probs_BHTS),
  the probabilities before dropout."""
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
    B, H, T, S = probs_BHTS.shape
    if dropout_stream_4 is None:
      dropout_stream_4 = dropout_stream(dropout_rng, H)
    keep_BHTS = flash.dropout_keep_mask(dropout_stream_4, B, H, T, S, dropout_rate)
    probs_BHTS = jnp.where(keep_BHTS, probs_BHTS / (1.0 - dropout_rate), 0.0)
  out_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK,
                        preferred_element_type=jnp.float32)
  if return_probs:
    return out_BTHK.astype(q_BTHK.dtype), softmax_BHTS
  return out_BTHK.astype(q_BTHK.dtype)


def attention(q_BTHK, k_BTHK, v_BTHK, *, causal: bool = True, segment_ids=None, impl: str = "xla",
              dropout_rate: float = 0.0, dropout_rng=None, dropout_stream_4=None):
  """Self-attention over equal-length q and k. Returns [B, T, H, K] in q's dtype.

  impl: "xla" (reference), "pallas" (our flash kernel, phi1/kernels/flash_attention.py;
  interpreted on CPU), "cudnn" (GPU only, bf16/fp16, no packed segment ids, no dropout), "auto"
  (`resolve_impl`). Inside `sharding.activation_sharding` the kernel impls run under shard_map.
  xla and pallas draw the same dropout mask from one `dropout_rng`.
  """
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  impl = resolve_impl(impl)
  if q_BTHK.shape != k_BTHK.shape or k_BTHK.shape != v_BTHK.shape:
    raise ValueError(f"q, k, v must share one [B, T, H, K] shape; got {q_BTHK.shape}, "
                     f"{k_BTHK.shape}, {v_BTHK.shape}")
  if dropout_rate > 0.0 and dropout_rng is None and dropout_stream_4 is None:
    raise ValueError("attention dropout needs a dropout_rng")
  if dropout_rate > 0.0 and dropout_stream_4 is None and impl != "cudnn":
    dropout_stream_4 = dropout_stream(dropout_rng, q_BTHK.shape[2])
  if impl == "xla":
    T = q_BTHK.shape[1]
    mask = attention_mask(segment_ids, causal, T, T) if (causal or segment_ids is not None) else None
    return xla_attention(q_BTHK, k_BTHK, v_BTHK, mask, dropout_rate=dropout_rate,
                         dropout_stream_4=dropout_stream_4)
  # A kernel is one opaque call XLA cannot partition: under the trainer's mesh it runs per shard.
  active = sharding.active()  # (mesh, rules) while the trainer traces, else None
  if active is not None and not jax.sharding.get_abstract_mesh().manual_axes:
    mesh, rules = active
    sharded = sharded_attention(mesh, rules.get("batch"), rules.get("act_heads"))
    return sharded(q_BTHK, k_BTHK, v_BTHK, causal=causal, segment_ids=segment_ids, impl=impl,
                   dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                   dropout_stream_4=dropout_stream_4)
  if impl == "pallas":
    return flash.flash_attention(q_BTHK, k_BTHK, v_BTHK, segment_ids, causal=causal,
                                 dropout_rate=dropout_rate, dropout_stream_4=dropout_stream_4)
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
                     "has no dropout); use impl='pallas' or 'xla' for attention dropout.")
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
  taking the axes of the logical names "batch" and "act_heads". Each shard hashes its rows' and
  heads' global indices, so its dropout mask is the unsharded call's.
  """
  qkv_spec = P(batch_axes, None, head_axis, None)
  seg_spec = P(batch_axes, None)
  batch_axes_list = [a for a in _as_tuple(batch_axes) if a is not None]
  head_axes_list = [a for a in _as_tuple(head_axis) if a is not None]

  def shard_index(axes):
    """This shard's position along `axes` (major to minor, as a PartitionSpec splits)."""
    index = jnp.int32(0)
    for axis in axes:
      index = index * mesh.shape[axis] + lax.axis_index(axis)
    return index

  def sharded(q_BTHK, k_BTHK, v_BTHK, *, causal=True, segment_ids=None, impl="xla",
              dropout_rate=0.0, dropout_rng=None, dropout_stream_4=None):
    if dropout_rate > 0.0 and dropout_stream_4 is None:
      if dropout_rng is None:
        raise ValueError("attention dropout needs a dropout_rng")
      dropout_stream_4 = dropout_stream(dropout_rng, q_BTHK.shape[2])

    def local(q, k, v, *extras):
      extras = list(extras)
      seg = extras.pop(0) if segment_ids is not None else None
      stream = extras.pop(0) if dropout_rate > 0.0 else None
      if stream is not None:  # this shard's first batch row and head, in global indices
        stream = stream.at[1].add(shard_index(batch_axes_list) * q.shape[0])
        stream = stream.at[2].add(shard_index(head_axes_list) * q.shape[2])
      return attention(q, k, v, causal=causal, segment_ids=seg, impl=impl,
                       dropout_rate=dropout_rate, dropout_stream_4=stream)

    args, specs = [q_BTHK, k_BTHK, v_BTHK], [qkv_spec] * 3
    if segment_ids is not None:
      args.append(segment_ids)
      specs.append(seg_spec)
    if dropout_rate > 0.0:
      args.append(dropout_stream_4)
      specs.append(P())
    # check_vma=False: pallas_call's outputs carry no varying-axes annotation, and the body is
    # purely per-shard (no collectives), so the check has nothing to verify.
    return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                         check_vma=False)(*args)

  return sharded


def _as_tuple(axes):
  return axes if isinstance(axes, tuple) else (axes,)
