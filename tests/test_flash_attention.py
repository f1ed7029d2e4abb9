"""The Pallas flash-attention kernels (interpret mode on CPU) against an fp32 reference.

The reference is phi1.attention's XLA path run in fp32 on the same (dtype-rounded) inputs, so the
only differences left are the kernel's own: block-wise online softmax, recomputed probabilities.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export

from phi1 import attention as attention_lib
from phi1.kernels import flash_attention as flash

# Small, non-square blocks: every shape below spans several blocks, so the multi-block loops, the
# causal skipping bounds and the diagonal-only masking all run.
TEST_BLOCKS = flash.BlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                               block_q_dq=32, block_k_dq=16)
# max |error| / max |reference| allowed, per input dtype.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}
# Dropout rescales the kept probabilities by 1/(1 - rate) before they are rounded to bf16 for the
# P @ V and dP products: about one more bf16 rounding step. A wrong mask bit costs ~1e-1.
DROPOUT_TOLERANCE = {**TOLERANCE, jnp.bfloat16: 2e-2}


# Interpret-mode kernels: skip XLA:CPU optimisation of code that runs a few times (conftest).
pytestmark = pytest.mark.usefixtures("quick_compiles")


def reference(q, k, v, segment_ids, causal, dropout_rate=0.0, stream=None):
  """fp32 XLA attention on the same (already rounded) inputs, with the kernel's dropout mask."""
  T = q.shape[1]
  mask = None
  if causal or segment_ids is not None:
    mask = attention_lib.attention_mask(segment_ids, causal, T, T)
  f32 = lambda x: x.astype(jnp.float32)
  return attention_lib.xla_attention(f32(q), f32(k), f32(v), mask, dropout_rate=dropout_rate,
                                     dropout_stream_4=stream)


def random_segments(rng: np.random.Generator, B: int, T: int):
  """Rows of 1-3 packed documents of random lengths followed by random padding (id 0)."""
  rows = []
  for _ in range(B):
    used = int(rng.integers(max(1, T // 2), T + 1))
    n_docs = min(int(rng.integers(1, 4)), used)
    cuts = np.sort(rng.choice(np.arange(1, used), size=n_docs - 1, replace=False)) if used > 1 else []
    ids = np.zeros(T, np.int32)
    for doc, (start, end) in enumerate(zip([0, *cuts], [*cuts, used])):
      ids[start:end] = doc + 1
    rows.append(ids)
  return jnp.asarray(np.stack(rows))


def random_qkv(seed, shape, dtype):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, do = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
  return q, k, v, do


def outputs_and_grads(attend, q, k, v, do):
  """attend(q, k, v) and the gradients of <attend(q, k, v), do> w.r.t. q, k, v (one jit)."""
  def run(q, k, v, do):
    out, vjp = jax.vjp(attend, q, k, v)
    return (out, *vjp(do.astype(out.dtype)))
  return jax.jit(run)(q, k, v, do)


def assert_close(name, got, want, tol):
  """max |got - want| <= tol * max |want|, with the scale floored at 1 (the inputs are unit
  normal): a gradient that is exactly 0 in theory (T = 1 gives dQ = 0) is met up to rounding."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.all(np.isfinite(got)), f"{name}: non-finite values"
  err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1.0)
  assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


# (T, K, causal, with_segments, dtype, B, H): each T meets both head dims, causal and not, with
# and without segment ids, in fp32; bf16 and fp16 cover the low-precision inputs.
GRID = [
    (1, 64, True, True, jnp.float32, 2, 1),
    (1, 128, True, False, jnp.float32, 1, 2),
    (1, 128, False, True, jnp.float32, 3, 1),
    (1, 64, False, False, jnp.float32, 1, 1),
    (17, 64, True, True, jnp.float32, 2, 2),
    (17, 128, True, False, jnp.float32, 1, 3),
    (17, 128, False, True, jnp.float32, 2, 1),
    (17, 64, False, False, jnp.float32, 1, 2),
    (128, 64, True, True, jnp.float32, 2, 2),
    (128, 128, True, False, jnp.float32, 1, 2),
    (128, 128, False, True, jnp.float32, 2, 1),
    (128, 64, False, False, jnp.float32, 1, 3),
    (300, 64, True, True, jnp.float32, 2, 1),
    (300, 128, True, False, jnp.float32, 1, 1),
    (300, 128, False, True, jnp.float32, 1, 2),
    (300, 64, False, False, jnp.float32, 1, 1),
    (17, 128, True, True, jnp.bfloat16, 2, 2),
    (128, 64, True, True, jnp.bfloat16, 2, 2),
    (300, 64, False, False, jnp.bfloat16, 1, 2),
    (128, 128, True, True, jnp.float16, 1, 2),
    (300, 64, True, False, jnp.float16, 2, 1),
]


@pytest.mark.parametrize("T,K,causal,with_segments,dtype,B,H", GRID)
def test_matches_fp32_reference(T, K, causal, with_segments, dtype, B, H):
  seed = zlib.crc32(repr((T, K, causal, with_segments, jnp.dtype(dtype).name, B, H)).encode())
  q, k, v, do = random_qkv(seed, (B, T, H, K), dtype)
  seg = random_segments(np.random.default_rng(seed), B, T) if with_segments else None
  kernel = lambda q, k, v: flash.flash_attention(q, k, v, seg, causal=causal,
                                                 block_sizes=TEST_BLOCKS)
  got = outputs_and_grads(kernel, q, k, v, do)
  want = outputs_and_grads(lambda q, k, v: reference(q, k, v, seg, causal), q, k, v, do)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == dtype, f"{name} came back as {g.dtype}, not the input dtype {dtype}"
    assert_close(name, g, w, TOLERANCE[dtype])


@pytest.mark.parametrize("T,K,causal,with_segments,dtype,B,H", GRID)
def test_dropout_matches_reference_with_the_same_mask(T, K, causal, with_segments, dtype, B, H):
  """Forward and gradients with dropout 0.3: the kernels regenerate, tile by tile, exactly the mask
  `dropout_keep_mask` builds for the XLA path (any differing bit would move an output by a whole
  probability / 0.7, far beyond the tolerance)."""
  seed = zlib.crc32(repr(("dropout", T, K, causal, with_segments, B, H)).encode())
  q, k, v, do = random_qkv(seed, (B, T, H, K), dtype)
  seg = random_segments(np.random.default_rng(seed), B, T) if with_segments else None
  # Offsets as a shard of a larger batch would pass them: the hash sees global indices.
  stream = flash.dropout_stream(seed % 2**31, batch_offset=3, head_offset=1, n_heads=H + 2)
  kernel = lambda q, k, v: flash.flash_attention(q, k, v, seg, causal=causal,
                                                 block_sizes=TEST_BLOCKS, dropout_rate=0.3,
                                                 dropout_stream_4=stream)
  got = outputs_and_grads(kernel, q, k, v, do)
  want = outputs_and_grads(lambda q, k, v: reference(q, k, v, seg, causal, 0.3, stream),
                           q, k, v, do)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(name, g, w, DROPOUT_TOLERANCE[dtype])


def test_dropout_mask_rate_and_independence():
  """The hashed keep-mask keeps 1 - rate of the entries, and differs between seeds, batch rows,
  heads and shard offsets (a row at batch offset 1 is batch row 1 of the unsharded call)."""
  B, H, T, rate = 2, 3, 128, 0.1
  stream = flash.dropout_stream(7, n_heads=H)
  keep = np.asarray(flash.dropout_keep_mask(stream, B, H, T, T, rate))
  assert keep.shape == (B, H, T, T)
  assert abs(keep.mean() - (1 - rate)) < 0.005, keep.mean()
  assert abs(keep.mean(axis=(0, 1, 2)) - (1 - rate)).max() < 0.05  # per key column
  pairs = [(keep[0, 0], keep[1, 0]), (keep[0, 0], keep[0, 1]), (keep[0, 0, :-1], keep[0, 0, 1:]),
           (keep[0, 0], np.asarray(flash.dropout_keep_mask(
               flash.dropout_stream(8, n_heads=H), B, H, T, T, rate))[0, 0])]
  for a, b in pairs:  # independent masks agree on ~rate^2 + (1-rate)^2 of entries, not all
    assert abs((a == b).mean() - (rate**2 + (1 - rate)**2)) < 0.01
  shard = flash.dropout_keep_mask(flash.dropout_stream(7, batch_offset=1, head_offset=2,
                                                       n_heads=H), 1, 1, T, T, rate)
  np.testing.assert_array_equal(shard[0, 0], keep[1, 2])
  assert np.asarray(flash.dropout_keep_mask(stream, B, H, T, T, 0.0)).all()


def test_dropout_needs_a_stream_and_a_rate_below_one():
  q = jnp.zeros((1, 8, 1, 16))
  with pytest.raises(ValueError, match="dropout_stream"):
    flash.flash_attention(q, q, q, dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    flash.flash_attention(q, q, q, dropout_rate=1.0, dropout_stream_4=flash.dropout_stream(0))


def test_default_blocks_match_reference():
  """The shipped block sizes (fitted to a short sequence, with internal padding 300 -> 384)."""
  q, k, v, do = random_qkv(7, (1, 300, 2, 64), jnp.float32)
  seg = random_segments(np.random.default_rng(7), 1, 300)
  got = outputs_and_grads(lambda q, k, v: flash.flash_attention(q, k, v, seg), q, k, v, do)
  want = outputs_and_grads(lambda q, k, v: reference(q, k, v, seg, True), q, k, v, do)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(name, g, w, 1e-5)


def test_packed_row_equals_documents_run_separately():
  lengths = (40, 57, 23)  # + 8 positions of padding in a row of 128
  T, H, K = 128, 1, 64
  q, k, v, do = random_qkv(3, (1, T, H, K), jnp.float32)
  seg = np.zeros((1, T), np.int32)
  starts = np.cumsum((0, *lengths))
  for doc, (start, end) in enumerate(zip(starts[:-1], starts[1:])):
    seg[0, start:end] = doc + 1
  packed = lambda q, k, v: flash.flash_attention(q, k, v, jnp.asarray(seg),
                                                 block_sizes=TEST_BLOCKS)
  out, dq, dk, dv = outputs_and_grads(packed, q, k, v, do)
  for start, end in zip(starts[:-1], starts[1:]):
    piece = lambda x: x[:, start:end]
    alone = lambda q, k, v: flash.flash_attention(q, k, v, block_sizes=TEST_BLOCKS)
    want = outputs_and_grads(alone, piece(q), piece(k), piece(v), piece(do))
    for name, g, w in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):
      np.testing.assert_allclose(piece(g), w, atol=1e-5, rtol=1e-5, err_msg=name)
  padding = slice(starts[-1], T)
  for name, g in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv)):
    assert np.all(np.asarray(g[:, padding]) == 0), f"{name} is non-zero on padding"


def test_fully_masked_rows_are_zero_with_finite_gradients():
  T = 40
  q, k, v, do = random_qkv(5, (2, T, 2, 64), jnp.bfloat16)
  # Row 0: all padding. Row 1: a document, then padding.
  seg = jnp.stack([jnp.zeros(T, jnp.int32), (jnp.arange(T) < 25).astype(jnp.int32)])
  kernel = lambda q, k, v: flash.flash_attention(q, k, v, seg, block_sizes=TEST_BLOCKS)
  out, dq, dk, dv = outputs_and_grads(kernel, q, k, v, do)
  for name, g in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv)):
    g = np.asarray(g, np.float32)
    assert np.all(np.isfinite(g)), name
    assert np.all(g[0] == 0) and np.all(g[1, 25:] == 0), f"{name} is non-zero where masked"
  assert np.any(np.asarray(out[1, :25], np.float32) != 0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block_q,block_k", [(32, 16), (16, 32), (32, 32)])
def test_loop_bounds_skip_exactly_the_hidden_blocks(causal, block_q, block_k):
  """Visited blocks = blocks with a visible pair, each once; unmasked blocks hide no pair."""
  T = 256
  n_q, n_k = T // block_q, T // block_k
  visible = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
  tile = lambda i, j: visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]

  def visits(spans):
    """{block: on_diagonal} over the spans; a block visited twice is an error."""
    seen = {}
    for start, stop, on_diagonal in spans:
      for b in range(int(start), int(stop)):
        assert b not in seen, f"block {b} visited twice"
        seen[b] = on_diagonal
    return seen

  for i in range(n_q):  # forward and dQ: query block i loops over key blocks
    seen = visits(flash._kv_spans(i, block_q, block_k, n_k, causal))
    for j in range(n_k):
      assert (j in seen) == tile(i, j).any(), (i, j)
      assert seen.get(j, True) or tile(i, j).all(), f"block {(i, j)} needs the causal mask"
  for j in range(n_k):  # dK/dV: key block j loops over query blocks
    seen = visits(flash._q_spans(j, block_q, block_k, n_q, causal))
    for i in range(n_q):
      assert (i in seen) == tile(i, j).any(), (i, j)
      assert seen.get(i, True) or tile(i, j).all(), f"block {(i, j)} needs the causal mask"


@pytest.mark.parametrize("dtype,K,with_segments,dropout", [(jnp.bfloat16, 64, False, 0.0),
                                                           (jnp.float16, 128, True, 0.0),
                                                           (jnp.float16, 64, True, 0.1)])
def test_lowers_to_triton_for_gpu(dtype, K, with_segments, dropout):
  """The GPU path (not the interpreter) lowers to Triton kernels, forward and backward, with the
  dropout hash (int32 wrapping multiplies, logical shifts, scalar loads) too."""
  B, T, H = 2, 2048, 4
  qkv = jax.ShapeDtypeStruct((B, T, H, K), dtype)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def loss(q, k, v, seg):
    out = flash.flash_attention(q, k, v, seg if with_segments else None, interpret=False,
                                dropout_rate=dropout, dropout_stream_4=flash.dropout_stream(5))
    return out.astype(jnp.float32).sum()

  exported = export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
  )(qkv, qkv, qkv, seg)
  text = exported.mlir_module()
  for kernel in ("flash_attention_forward", "flash_attention_dkv", "flash_attention_dq"):
    assert f'name = "{kernel}"' in text, f"{kernel} missing from the GPU lowering"


@pytest.mark.parametrize("change,message", [
    (dict(K=48), "power of two"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(k_dtype=jnp.float16), "dtype"),
    (dict(blocks=flash.BlockSizes(block_q=48)), "block_q=48"),
    (dict(seg_shape=(1, 5)), "segment_ids"),
])
def test_bad_inputs_raise_clear_errors(change, message):
  K, dtype = change.get("K", 64), change.get("dtype", jnp.float32)
  q = jnp.zeros((1, 8, 1, K), dtype)
  k = q.astype(change.get("k_dtype", dtype))
  seg = jnp.ones(change["seg_shape"], jnp.int32) if "seg_shape" in change else None
  with pytest.raises(ValueError, match=message):
    flash.flash_attention(q, k, q, seg, block_sizes=change.get("blocks", flash.BlockSizes()))


def test_tiny_model_trains_the_same_with_pallas_and_xla():
  """20 optimizer steps of the tiny phi-1 on packed rows: the loss curves agree to 1e-4."""
  from phi1.model import Phi1, Phi1Config

  B, T, steps = 2, 64, 20
  vocab = Phi1Config.tiny().vocab_size
  # Counting sequences from random starts: learnable in a few steps, so the curve moves.
  starts = np.random.default_rng(0).integers(0, vocab, size=(steps, B, 1))
  data = ((starts + np.arange(T + 1)) % vocab).astype(np.int32)
  # Two documents and a little padding per row, as the packer produces.
  seg = np.ones((B, T), np.int32)
  seg[:, 30:] = 2
  seg[:, 60:] = 0
  positions = np.concatenate([np.arange(30), np.arange(30), np.zeros(4, int)])[None].repeat(B, 0)
  seg, positions = jnp.asarray(seg), jnp.asarray(positions, jnp.int32)

  def losses(impl):
    model = Phi1(Phi1Config.tiny(attention_impl=impl), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
      def loss_fn(model):
        logits = model(batch[:, :-1], segment_ids=seg, positions=positions)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
        weights = (seg > 0).astype(jnp.float32)
        return (nll * weights).sum() / weights.sum()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    return np.array([float(step(model, optimizer, jnp.asarray(batch))) for batch in data])

  xla, pallas = losses("xla"), losses("pallas")
  assert xla[-1] < xla[0] - 0.1, f"the tiny model did not learn: {xla}"
  np.testing.assert_allclose(pallas, xla, atol=1e-4, rtol=0)


on_gpu = pytest.mark.skipif(jax.default_backend() not in ("gpu", "cuda"), reason="needs a GPU")


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _jax_pallas(q, k, v):
  from jax.experimental.pallas.ops.gpu import attention as jax_attention
  return jax_attention.mha(q, k, v, None, sm_scale=1.0 / np.sqrt(q.shape[-1]), causal=True)


@on_gpu
@pytest.mark.parametrize("peer", [_cudnn, _jax_pallas], ids=["cudnn", "jax_pallas"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_gpu_kernel_matches_the_peer_kernels(peer, dtype):
  """On the device, our compiled kernel against cuDNN's and jax's own Pallas flash attention:
  outputs and q/k/v gradients at phi-1's head dim, causal, a multi-block sequence."""
  q, k, v, do = random_qkv(11, (2, 1024, 4, 64), dtype)
  ours = outputs_and_grads(lambda q, k, v: flash.flash_attention(q, k, v), q, k, v, do)
  theirs = outputs_and_grads(peer, q, k, v, do)
  for name, g, w in zip(("out", "dq", "dk", "dv"), ours, theirs):
    assert_close(name, g, w, 2 * TOLERANCE[dtype])


def test_tiny_model_with_attention_dropout_is_the_same_on_both_impls():
  """The paper's training attention (dropout 0.1) through the model: one dropout key gives the
  kernel and the XLA path one mask, so loss and gradients agree."""
  from phi1.model import Phi1, Phi1Config

  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 512, (2, 48)), jnp.int32)

  def loss_and_grads(impl):
    model = Phi1(Phi1Config.tiny(attention_impl=impl, attn_dropout=0.1), rngs=nnx.Rngs(0))
    model.train()

    def loss_fn(model):
      logits = model(tokens[:, :-1], rngs=nnx.Rngs(dropout=3))
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return nnx.jit(nnx.value_and_grad(loss_fn))(model)

  (loss_x, grads_x), (loss_p, grads_p) = loss_and_grads("xla"), loss_and_grads("pallas")
  eval_model = Phi1(Phi1Config.tiny(attention_impl="xla", attn_dropout=0.1), rngs=nnx.Rngs(0))
  eval_model.eval()
  no_dropout = optax.softmax_cross_entropy_with_integer_labels(
      eval_model(tokens[:, :-1]), tokens[:, 1:]).mean()
  assert abs(float(loss_x) - float(no_dropout)) > 1e-4  # dropout acted
  np.testing.assert_allclose(loss_p, loss_x, rtol=1e-5)
  for g_p, g_x in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_x)):
    np.testing.assert_allclose(g_p, g_x, atol=1e-5, rtol=1e-4)
