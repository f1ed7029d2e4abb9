"""Flash attention in Pallas: forward and backward kernels behind one `jax.custom_vjp`.

FlashAttention-2 (Dao, 2023, arXiv:2307.08691), the algorithm phi-1 was trained with (paper §2.3):
the [T, S] score matrix is never stored. The forward kernel walks over key blocks keeping an online
softmax in fp32 (running max `m`, running sum `l`, unnormalised output `acc`) and saves the
logsumexp; the backward pass recomputes the probabilities from it, block by block, in two kernels:
  dK, dV: one program per key block, looping over query blocks;
  dQ:     one program per query block, looping over key blocks.
Two kernels instead of one fused kernel with atomics keeps every write exclusive to one program,
so the gradients are deterministic and the code reads like the maths.

Layout is [B, T, H, K] (batch, sequence, heads, head dim), the model's own, so no transposes.
Masking:
  * causal: key blocks entirely in a query block's future are skipped by the loop bounds, and
    only the blocks that straddle the diagonal pay for the elementwise mask;
  * segment_ids_BT (1-based per packed document, 0 = padding): a query sees only keys of its own
    document, padding sees nothing. Masked scores get a large finite value (never -inf, whose
    differences give NaN) and rows that see no key at all give a zero output and zero gradients.
Sequence lengths that are not a multiple of the block size are padded here: padded keys get a
segment id that matches no query, padded rows are sliced away.

Attention dropout (the paper trains with 0.1 through FlashAttention, §2.3) drops entries of the
normalised probabilities P. The keep-mask is never stored: each kernel regenerates the bits of its
tile from a counter-based hash of (seed, batch row, head, query index, key index) (`_keep_tile`),
so the forward and both backward kernels see one mask, and `dropout_keep_mask` gives the same mask
as a dense array to the XLA path. With Z the mask scaled by 1/(1 - rate): O = (P * Z) V, and the
backward uses dP = (dO V^T) * Z; delta = rowsum(dO * O) is unchanged (FlashAttention-2, §3.1).

Written for GPUs through Pallas' Triton lowering. On a CPU backend it runs the very same kernels
with `interpret=True` (slow, for tests). Precision: dots accumulate in fp32 whatever the input
dtype (bf16/fp16/fp32); probabilities are cast to the value dtype before P @ V, as every flash
kernel does.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Same value as phi1.attention.MASK_VALUE: finite, so exp(mask - max) is 0 or 1, never NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Scores are kept in base 2 (exp2 is the GPU's native exponential): s2 = s * log2(e).
LOG2_E = math.log2(math.e)
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Triton's dot needs every tile dimension >= 16.
MIN_BLOCK = 16


# ------------------------------------------------------------------------------------- dropout
# All hashing is int32 arithmetic (wrapping multiply, logical shifts), which both XLA and Triton
# lower natively; constants are the unsigned ones of MurmurHash3's finaliser, written as int32.

def _i32(value: int) -> int:
  return value - (1 << 32) if value >= 1 << 31 else value


_MIX_1, _MIX_2 = _i32(0x85EBCA6B), _i32(0xC2B2AE35)
_GOLDEN = _i32(0x9E3779B9)  # odd: multiplying by it permutes int32, spreading nearby counters
_KEEP_BITS = 24  # a drop decision compares the top 24 hash bits with round(rate * 2**24)


def _mix(x):
  """MurmurHash3's 32-bit finaliser: a bijection on int32 whose output bits all depend on every
  input bit."""
  x = x ^ lax.shift_right_logical(x, jnp.int32(16))
  x = x * jnp.int32(_MIX_1)
  x = x ^ lax.shift_right_logical(x, jnp.int32(13))
  x = x * jnp.int32(_MIX_2)
  return x ^ lax.shift_right_logical(x, jnp.int32(16))


def dropout_stream(seed, batch_offset=0, head_offset=0, n_heads=1):
  """int32[4] (seed, first batch row, first head, total heads): what a kernel call needs to hash
  global (batch, head) indices. A shard of a sharded batch passes its own offsets, so its mask is
  the unsharded array's."""
  parts = (seed, batch_offset, head_offset, n_heads)
  return jnp.stack([jnp.asarray(x).astype(jnp.int32).reshape(()) for x in parts])


def seed_from_key(key):
  """An int32 dropout seed drawn from a JAX PRNG key."""
  return lax.bitcast_convert_type(jax.random.bits(key, (), jnp.uint32), jnp.int32)


def _row_hashes(stream_4, b, h, q_pos):
  """[bq] int32: one hash per query row of batch row b (local) and head h (local)."""
  seed, b0, h0, n_heads = stream_4[0], stream_4[1], stream_4[2], stream_4[3]
  head_stream = _mix(seed ^ _mix((b + b0) * n_heads + (h + h0)))
  return _mix(head_stream ^ (q_pos.astype(jnp.int32) * jnp.int32(_GOLDEN)))


def _keep_threshold(rate: float) -> int:
  return int(round(rate * (1 << _KEEP_BITS)))


def _keep_tile(row_hash, k_pos, rate: float):
  """[bq, bk] bool keep-mask of one tile from its rows' hashes and key positions."""
  bits = _mix(row_hash[:, None] ^ (k_pos.astype(jnp.int32)[None, :] * jnp.int32(_GOLDEN)))
  bits = lax.shift_right_logical(bits, jnp.int32(32 - _KEEP_BITS))
  return bits >= jnp.int32(_keep_threshold(rate))


def dropout_keep_mask(stream_4, B: int, H: int, T: int, S: int, rate: float):
  """[B, H, T, S] bool: the kernels' keep-mask as a dense array (for the XLA path and tests)."""
  def one_head(b, h):
    return _keep_tile(_row_hashes(stream_4, b, h, jnp.arange(T)), jnp.arange(S), rate)
  heads = jax.vmap(one_head, in_axes=(None, 0))
  return jax.vmap(heads, in_axes=(0, None))(jnp.arange(B), jnp.arange(H))


def _apply_dropout(x, keep, rate: float):
  return jnp.where(keep, x * (1.0 / (1.0 - rate)), 0.0)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two) of the three kernels, along the query (q) and key (k) axes.

  The defaults are the usual Triton choices for head dim 64-128 (a large tile on the axis a program
  owns, a narrow one on the axis it streams over). They were NOT measured on a GPU in the session
  that wrote this file (none was available): run bench/attention.py on the target card and tune.
  Blocks larger than the (padded) sequence shrink to fit it.
  """
  block_q: int = 128       # forward: query rows per program
  block_k: int = 64        # forward: keys per loop step
  block_q_dkv: int = 32    # dK/dV: queries per loop step
  block_k_dkv: int = 128   # dK/dV: keys per program
  block_q_dq: int = 128    # dQ: query rows per program
  block_k_dq: int = 32     # dQ: keys per loop step
  num_warps: int | None = None   # None: 4 for head dim <= 64, else 8
  num_stages: int = 2

  @classmethod
  def uniform(cls, block: int, **overrides) -> "BlockSizes":
    """Every block the same size (tests use small ones to cover the multi-block paths)."""
    names = ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq", "block_k_dq")
    return cls(**{**{name: block for name in names}, **overrides})

  def fitted(self, T: int) -> "BlockSizes":
    """Blocks no larger than the sequence rounded up to a power of two (and at least 16)."""
    cap = max(MIN_BLOCK, pl.next_power_of_2(T))
    blocks = {f.name: min(getattr(self, f.name), cap) for f in dataclasses.fields(self)
              if f.name.startswith("block_")}
    return dataclasses.replace(self, **blocks)

  def validate(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name.startswith("block_") and (value < MIN_BLOCK or value & (value - 1)):
        raise ValueError(f"BlockSizes.{f.name}={value} must be a power of two >= {MIN_BLOCK}")

  @property
  def largest(self) -> int:
    return max(getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("block_"))


def flash_attention(q_BTHK, k_BTHK, v_BTHK, segment_ids_BT=None, *, causal: bool = True,
                    sm_scale: float | None = None, block_sizes: BlockSizes = BlockSizes(),
                    interpret: bool | None = None, dropout_rate: float = 0.0,
                    dropout_stream_4=None):
  """softmax(q k^T * sm_scale + mask) v on [B, T, H, K] inputs; differentiable w.r.t. q, k, v.

  Args:
    q_BTHK, k_BTHK, v_BTHK: one shape and one dtype (float32, bfloat16 or float16); the head dim K
      must be a power of two >= 16 (phi-1 uses 64).
    segment_ids_BT: optional int [B, T], 1-based per packed document, 0 for padding.
    causal: mask keys in each query's future.
    sm_scale: score scale, 1/sqrt(K) when None.
    block_sizes: kernel tiles, see BlockSizes.
    interpret: run the kernels in the Pallas interpreter; None means "when the backend is CPU".
    dropout_rate: attention dropout on the probabilities, in [0, 1).
    dropout_stream_4: with dropout, `dropout_stream(seed, ...)`: the mask is
      `dropout_keep_mask(dropout_stream_4, B, H, T, T, dropout_rate)`.
  Returns:
    [B, T, H, K] in q's dtype; rows that may attend to no key (padding) are zero.
  """
  _check_inputs(q_BTHK, k_BTHK, v_BTHK, segment_ids_BT)
  _check_dropout(dropout_rate, dropout_stream_4)
  B, T, H, K = q_BTHK.shape
  if sm_scale is None:
    sm_scale = 1.0 / math.sqrt(K)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  block_sizes.validate()
  blocks = block_sizes.fitted(T)
  T_pad = pl.cdiv(T, blocks.largest) * blocks.largest

  q_seg_BT = kv_seg_BT = None
  if segment_ids_BT is not None or T_pad != T:
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones((B, T), jnp.int32)
    segment_ids_BT = segment_ids_BT.astype(jnp.int32)
    # Padding (id 0) must match nothing: queries keep 0, keys get -1, so a padded query sees no
    # key (zero row) and a padded key is seen by no query.
    q_seg_BT = jnp.pad(segment_ids_BT, ((0, 0), (0, T_pad - T)))
    kv_seg_BT = jnp.where(q_seg_BT == 0, -1, q_seg_BT)

  pad = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, 0)))
  stream_4 = None if dropout_rate == 0 else jnp.asarray(dropout_stream_4, jnp.int32)
  out_BTHK = _flash(pad(q_BTHK), pad(k_BTHK), pad(v_BTHK), q_seg_BT, kv_seg_BT, stream_4,
                    causal=causal, sm_scale=float(sm_scale), blocks=blocks,
                    interpret=bool(interpret), dropout_rate=float(dropout_rate))
  return out_BTHK[:, :T]


def _check_inputs(q, k, v, segment_ids):
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"flash_attention wants q, k, v of one [B, T, H, K] shape; got {q.shape}, "
                     f"{k.shape}, {v.shape}")
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
    raise ValueError(f"flash_attention wants q, k, v of one dtype among float32/bfloat16/float16; "
                     f"got {q.dtype}, {k.dtype}, {v.dtype}")
  K = q.shape[-1]
  if K < MIN_BLOCK or K & (K - 1):
    raise ValueError(f"flash_attention needs a head dim that is a power of two >= {MIN_BLOCK} "
                     f"(Triton tile constraint); got {K}. Use impl='xla' for this shape.")
  if segment_ids is not None and segment_ids.shape != q.shape[:2]:
    raise ValueError(f"segment_ids must be [B, T] = {q.shape[:2]}, got {segment_ids.shape}")
  if segment_ids is not None and not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be integers (1-based documents, 0 = padding), "
                     f"got {segment_ids.dtype}")


def _check_dropout(rate, stream_4):
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout_rate must lie in [0, 1), got {rate}")
  if rate > 0 and (stream_4 is None or jnp.shape(stream_4) != (4,)):
    raise ValueError("dropout_rate > 0 needs dropout_stream_4=dropout_stream(seed, ...), an "
                     f"int32[4]; got {None if stream_4 is None else jnp.shape(stream_4)}")


def _dropout_context(stream_ref):
  """(stream scalars, batch row, head) of this program, read once at the top of a kernel (program
  ids cannot be read inside its loops in interpret mode); None without dropout."""
  if stream_ref is None:
    return None
  stream = tuple(stream_ref[i] for i in range(4))  # scalar loads: Triton extracts no elements
  return stream, pl.program_id(1), pl.program_id(2)


def _tile_keep(context, q_pos, k_pos, rate):
  """The dropout keep-mask of a [bq, bk] tile of this program's (batch, head); None: no dropout."""
  if context is None:
    return None
  stream, b, h = context
  return _keep_tile(_row_hashes(stream, b, h, q_pos), k_pos, rate)


# ------------------------------------------------------------------------------------- masking

def _visible(q_pos, k_pos, q_seg, k_seg, *, causal: bool):
  """[bq, bk] bool: which (query, key) pairs may interact; None when all of them may."""
  mask = None
  if causal:
    mask = q_pos[:, None] >= k_pos[None, :]
  if q_seg is not None:
    same_doc = q_seg[:, None] == k_seg[None, :]
    mask = same_doc if mask is None else mask & same_doc
  return mask


def _scores2(q, k, sm_scale, mask):
  """Scaled scores in base 2, fp32 [bq, bk]; masked pairs get MASK_VALUE."""
  s = _dot_nt(q, k) * (sm_scale * LOG2_E)
  return s if mask is None else jnp.where(mask, s, MASK_VALUE)


def _dot(a, b):
  """a @ b with fp32 accumulation (fp16 inputs would otherwise accumulate in fp16 on Triton)."""
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_tn(a, b):
  """a^T @ b, fp32 accumulation, without materialising the transpose."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_nt(a, b):
  """a @ b^T, fp32 accumulation, without materialising the transpose."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _run_loops(body, carry, spans):
  """Runs `body` over each (start, stop, on_diagonal) span of blocks in turn."""
  for start, stop, on_diagonal in spans:
    carry = lax.fori_loop(start, stop, functools.partial(body, on_diagonal=on_diagonal), carry)
  return carry


def _kv_spans(i_q, block_q, block_k, n_k, causal):
  """Key blocks query block i_q needs, as (start, stop, on_diagonal) spans.

  Under a causal mask, key blocks wholly in the future are never visited; the ones before the
  diagonal band are visible to every query of the block and skip the elementwise mask.
  """
  if not causal:
    return [(0, n_k, False)]
  first_q, last_q = i_q * block_q, (i_q + 1) * block_q - 1
  band_start = lax.div(first_q, block_k)  # the key block holding the block's first query
  band_stop = lax.div(last_q, block_k) + 1  # one past the block holding its last query
  return [(0, band_start, False), (band_start, band_stop, True)]


def _q_spans(i_k, block_q, block_k, n_q, causal):
  """Query blocks that see key block i_k, as (start, stop, on_diagonal) spans."""
  if not causal:
    return [(0, n_q, False)]
  first_k, last_k = i_k * block_k, (i_k + 1) * block_k - 1
  band_start = lax.div(first_k, block_q)  # earlier query blocks see none of these keys
  band_stop = lax.div(last_k, block_q) + 1  # later ones see all of them
  return [(band_start, band_stop, True), (band_stop, n_q, False)]


# ------------------------------------------------------------------------------------- forward

def _forward_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, stream_ref, o_ref, lse2_ref, *,
                    causal, sm_scale, block_k, dropout_rate):
  block_q, K = q_ref.shape
  n_q, n_k = k_ref.shape[0] // block_q, k_ref.shape[0] // block_k
  i_q = _reversed_block(pl.program_id(0), n_q)
  q = q_ref[...]
  q_pos = i_q * block_q + jnp.arange(block_q)
  q_seg = None if q_seg_ref is None else q_seg_ref[...]
  dropout = _dropout_context(stream_ref)

  def body(j, carry, on_diagonal):
    acc, m, l = carry
    keys = pl.ds(j * block_k, block_k)
    k_pos = j * block_k + jnp.arange(block_k)
    k_seg = None if kv_seg_ref is None else kv_seg_ref[keys]
    mask = _visible(q_pos, k_pos, q_seg, k_seg, causal=causal and on_diagonal)
    s = _scores2(q, k_ref[keys, :], sm_scale, mask)
    m_new = jnp.maximum(m, s.max(axis=1))
    correction = jnp.exp2(m - m_new)   # rescales what was summed under the old max
    p = jnp.exp2(s - m_new[:, None])
    l = l * correction + p.sum(axis=1)  # the softmax normaliser counts dropped entries too
    keep = _tile_keep(dropout, q_pos, k_pos, dropout_rate)
    if keep is not None:
      p = _apply_dropout(p, keep, dropout_rate)
    v = v_ref[keys, :]
    acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  # m starts at MASK_VALUE, not -inf: a row whose keys are all masked keeps m == MASK_VALUE and
  # never computes inf - inf.
  carry = (jnp.zeros((block_q, K), jnp.float32), jnp.full((block_q,), MASK_VALUE, jnp.float32),
           jnp.zeros((block_q,), jnp.float32))
  acc, m, l = _run_loops(body, carry, _kv_spans(i_q, block_q, block_k, n_k, causal))
  # A row that saw no key has m == MASK_VALUE exactly (real scores are far above it); its
  # "probabilities" were exp2(0) = 1 over masked keys, so zero it. Any real key makes the masked
  # ones vanish (exp2(MASK_VALUE - m) == 0), so visible rows need nothing.
  saw_a_key = m > MASK_VALUE
  o_ref[...] = jnp.where(saw_a_key[:, None], acc / l[:, None], 0.0).astype(o_ref.dtype)
  # +inf makes exp2(s - lse2) == 0 in the backward pass: no key, no gradient.
  lse2_ref[...] = jnp.where(saw_a_key, m + jnp.log2(l), jnp.inf)


def _reversed_block(program_id, n_blocks):
  """Query blocks run last-first: under a causal mask they are the longest, so the grid's tail is
  short work rather than one long straggler."""
  return n_blocks - 1 - program_id


def _compiler_params(blocks: BlockSizes, K: int):
  num_warps = blocks.num_warps or (4 if K <= 64 else 8)
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=blocks.num_stages)


def _forward(q, k, v, q_seg, kv_seg, stream_4, *, causal, sm_scale, blocks: BlockSizes,
             interpret, dropout_rate):
  B, T, H, K = q.shape
  bq, bk = blocks.block_q, blocks.block_k
  n_q = T // bq
  q_block = lambda i, b, h: (b, _reversed_block(i, n_q), h, 0)
  whole_seq = lambda i, b, h: (b, 0, h, 0)
  has_seg = q_seg is not None
  in_specs = [
      pl.BlockSpec((None, bq, None, K), q_block),
      pl.BlockSpec((None, T, None, K), whole_seq),
      pl.BlockSpec((None, T, None, K), whole_seq),
      pl.BlockSpec((None, bq), lambda i, b, h: (b, _reversed_block(i, n_q))) if has_seg else None,
      pl.BlockSpec((None, T), lambda i, b, h: (b, 0)) if has_seg else None,
      _stream_spec(stream_4),
  ]
  out_specs = [
      pl.BlockSpec((None, bq, None, K), q_block),
      pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, _reversed_block(i, n_q))),
  ]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((B, H, T), jnp.float32)]
  kernel = functools.partial(_forward_kernel, causal=causal, sm_scale=sm_scale, block_k=bk,
                             dropout_rate=dropout_rate)
  out, lse2_BHT = pl.pallas_call(
      kernel, grid=(n_q, B, H), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_compiler_params(blocks, K), interpret=interpret,
      name="flash_attention_forward",
  )(q, k, v, q_seg, kv_seg, stream_4)
  return out, lse2_BHT


def _stream_spec(stream_4):
  """The dropout stream, whole, to every program (None without dropout)."""
  return None if stream_4 is None else pl.BlockSpec((4,), lambda i, b, h: (0,))


# ------------------------------------------------------------------------------------ backward
# With P = softmax(S), O = P V and dO given:  dV = P^T dO,  dP = dO V^T,
# dS = P * (dP - delta) with delta = rowsum(dO * O),  dQ = scale * dS K,  dK = scale * dS^T Q.
# With dropout (Z = keep / (1 - rate)): dV = (P * Z)^T dO and dP = (dO V^T) * Z.

def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, q_seg_ref, kv_seg_ref,
                stream_ref, dk_ref, dv_ref, *, causal, sm_scale, block_q, dropout_rate):
  block_k, K = k_ref.shape
  n_q, i_k = q_ref.shape[0] // block_q, pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  k_pos = i_k * block_k + jnp.arange(block_k)
  k_seg = None if kv_seg_ref is None else kv_seg_ref[...]
  dropout = _dropout_context(stream_ref)

  def body(i, carry, on_diagonal):
    dk, dv = carry
    queries = pl.ds(i * block_q, block_q)
    q_pos = i * block_q + jnp.arange(block_q)
    q_seg = None if q_seg_ref is None else q_seg_ref[queries]
    mask = _visible(q_pos, k_pos, q_seg, k_seg, causal=causal and on_diagonal)
    q, do = q_ref[queries, :], do_ref[queries, :]
    p = jnp.exp2(_scores2(q, k, sm_scale, mask) - lse2_ref[queries][:, None])
    dp = _dot_nt(do, v)
    keep = _tile_keep(dropout, q_pos, k_pos, dropout_rate)
    if keep is None:
      dv = dv + _dot_tn(p.astype(do.dtype), do)
    else:
      dv = dv + _dot_tn(_apply_dropout(p, keep, dropout_rate).astype(do.dtype), do)
      dp = _apply_dropout(dp, keep, dropout_rate)
    ds = p * (dp - delta_ref[queries][:, None])
    dk = dk + _dot_tn(ds.astype(q.dtype), q)
    return dk, dv

  zeros = jnp.zeros((block_k, K), jnp.float32)
  dk, dv = _run_loops(body, (zeros, zeros), _q_spans(i_k, block_q, block_k, n_q, causal))
  dk_ref[...] = (dk * sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse2_ref, delta_ref, q_seg_ref, kv_seg_ref,
               stream_ref, dq_ref, *, causal, sm_scale, block_k, dropout_rate):
  block_q, K = q_ref.shape
  n_q, n_k = k_ref.shape[0] // block_q, k_ref.shape[0] // block_k
  i_q = _reversed_block(pl.program_id(0), n_q)
  q, do = q_ref[...], do_ref[...]
  lse2, delta = lse2_ref[...], delta_ref[...]
  q_pos = i_q * block_q + jnp.arange(block_q)
  q_seg = None if q_seg_ref is None else q_seg_ref[...]
  dropout = _dropout_context(stream_ref)

  def body(j, dq, on_diagonal):
    keys = pl.ds(j * block_k, block_k)
    k_pos = j * block_k + jnp.arange(block_k)
    k_seg = None if kv_seg_ref is None else kv_seg_ref[keys]
    mask = _visible(q_pos, k_pos, q_seg, k_seg, causal=causal and on_diagonal)
    k, v = k_ref[keys, :], v_ref[keys, :]
    p = jnp.exp2(_scores2(q, k, sm_scale, mask) - lse2[:, None])
    dp = _dot_nt(do, v)
    keep = _tile_keep(dropout, q_pos, k_pos, dropout_rate)
    if keep is not None:
      dp = _apply_dropout(dp, keep, dropout_rate)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _run_loops(body, jnp.zeros((block_q, K), jnp.float32),
                  _kv_spans(i_q, block_q, block_k, n_k, causal))
  dq_ref[...] = (dq * sm_scale).astype(dq_ref.dtype)


def _backward(q, k, v, q_seg, kv_seg, stream_4, out, lse2_BHT, do, *, causal, sm_scale,
              blocks: BlockSizes, interpret, dropout_rate):
  B, T, H, K = q.shape
  # delta = rowsum(dO * O): a cheap elementwise reduction, left to XLA to fuse.
  delta_BHT = jnp.einsum("bthk,bthk->bht", do.astype(jnp.float32), out.astype(jnp.float32))
  has_seg = q_seg is not None
  whole_seq = lambda i, b, h: (b, 0, h, 0)
  whole_row = lambda i, b, h: (b, h, 0)
  params = _compiler_params(blocks, K)
  operands = (q, k, v, do, lse2_BHT, delta_BHT, q_seg, kv_seg, stream_4)

  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  key_block = lambda i, b, h: (b, i, h, 0)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, causal=causal, sm_scale=sm_scale, block_q=bq,
                        dropout_rate=dropout_rate),
      grid=(T // bk, B, H),
      in_specs=[
          pl.BlockSpec((None, T, None, K), whole_seq),       # q
          pl.BlockSpec((None, bk, None, K), key_block),      # k
          pl.BlockSpec((None, bk, None, K), key_block),      # v
          pl.BlockSpec((None, T, None, K), whole_seq),       # do
          pl.BlockSpec((None, None, T), whole_row),          # lse2
          pl.BlockSpec((None, None, T), whole_row),          # delta
          pl.BlockSpec((None, T), lambda i, b, h: (b, 0)) if has_seg else None,
          pl.BlockSpec((None, bk), lambda i, b, h: (b, i)) if has_seg else None,
          _stream_spec(stream_4),
      ],
      out_specs=[pl.BlockSpec((None, bk, None, K), key_block)] * 2,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=interpret, name="flash_attention_dkv",
  )(*operands)

  bq, bk = blocks.block_q_dq, blocks.block_k_dq
  n_q = T // bq
  query_block = lambda i, b, h: (b, _reversed_block(i, n_q), h, 0)
  query_row = lambda i, b, h: (b, h, _reversed_block(i, n_q))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, causal=causal, sm_scale=sm_scale, block_k=bk,
                        dropout_rate=dropout_rate),
      grid=(n_q, B, H),
      in_specs=[
          pl.BlockSpec((None, bq, None, K), query_block),    # q
          pl.BlockSpec((None, T, None, K), whole_seq),       # k
          pl.BlockSpec((None, T, None, K), whole_seq),       # v
          pl.BlockSpec((None, bq, None, K), query_block),    # do
          pl.BlockSpec((None, None, bq), query_row),         # lse2
          pl.BlockSpec((None, None, bq), query_row),         # delta
          pl.BlockSpec((None, bq), lambda i, b, h: (b, _reversed_block(i, n_q)))
          if has_seg else None,
          pl.BlockSpec((None, T), lambda i, b, h: (b, 0)) if has_seg else None,
          _stream_spec(stream_4),
      ],
      out_specs=pl.BlockSpec((None, bq, None, K), query_block),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=interpret, name="flash_attention_dq",
  )(*operands)
  return dq, dk, dv


# ---------------------------------------------------------------------------------- custom_vjp

_STATIC = ("causal", "sm_scale", "blocks", "interpret", "dropout_rate")


@functools.partial(jax.custom_vjp, nondiff_argnames=_STATIC)
def _flash(q, k, v, q_seg, kv_seg, stream_4, causal, sm_scale, blocks, interpret, dropout_rate):
  out, _ = _forward(q, k, v, q_seg, kv_seg, stream_4, causal=causal, sm_scale=sm_scale,
                    blocks=blocks, interpret=interpret, dropout_rate=dropout_rate)
  return out


def _flash_fwd(q, k, v, q_seg, kv_seg, stream_4, causal, sm_scale, blocks, interpret,
               dropout_rate):
  out, lse2_BHT = _forward(q, k, v, q_seg, kv_seg, stream_4, causal=causal, sm_scale=sm_scale,
                           blocks=blocks, interpret=interpret, dropout_rate=dropout_rate)
  return out, (q, k, v, q_seg, kv_seg, stream_4, out, lse2_BHT)


def _flash_bwd(causal, sm_scale, blocks, interpret, dropout_rate, residuals, do):
  q, k, v, q_seg, kv_seg, stream_4, out, lse2_BHT = residuals
  dq, dk, dv = _backward(q, k, v, q_seg, kv_seg, stream_4, out, lse2_BHT, do, causal=causal,
                         sm_scale=sm_scale, blocks=blocks, interpret=interpret,
                         dropout_rate=dropout_rate)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
