"""phi1.attention: the XLA reference, the impl switch and what each impl refuses, shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from phi1 import attention as attention_lib
from phi1 import sharding

on_gpu = pytest.mark.skipif(jax.default_backend() not in ("gpu", "cuda"), reason="needs a GPU")


# Interpret-mode kernels: skip XLA:CPU optimisation of code that runs a few times (conftest).
pytestmark = pytest.mark.usefixtures("quick_compiles")


def random_qkv(seed, shape, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)


def packed_segments(B, T):
  """Two documents then padding in every row, at different split points per row."""
  ids = np.zeros((B, T), np.int32)
  for b in range(B):
    first, used = T // 3 + b, T - 2 - b
    ids[b, :first], ids[b, first:used] = 1, 2
  return jnp.asarray(ids)


def assert_matches(got, want, tol=1e-5):
  """max |got - want| <= tol * max(1, max |want|): fp32 rounding, scaled to the values (a gradient
  that is 0 in theory, like dQ of a document's first token, is met up to that rounding)."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.all(np.isfinite(got))
  err = np.max(np.abs(got - want))
  assert err <= tol * max(1.0, np.max(np.abs(want))), f"max error {err:.2e}"


def loop_attention(q, k, v, segment_ids, causal):
  """Attention one query at a time in float64 numpy: the definition, with no masking tricks."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, H, K = q.shape
  seg = np.ones((B, T), int) if segment_ids is None else np.asarray(segment_ids)
  out = np.zeros_like(q)
  for b in range(B):
    for t in range(T):
      keys = [s for s in range(T) if seg[b, t] > 0 and seg[b, s] == seg[b, t]
              and (not causal or s <= t)]
      if not keys:
        continue
      for h in range(H):
        scores = k[b, keys, h] @ q[b, t, h] / np.sqrt(K)
        weights = np.exp(scores - scores.max())
        out[b, t, h] = weights / weights.sum() @ v[b, keys, h]
  return out


@pytest.mark.parametrize("causal,with_segments", [(True, True), (True, False), (False, True)])
def test_xla_matches_the_definition(causal, with_segments):
  q, k, v = random_qkv(0, (2, 12, 2, 8))
  seg = packed_segments(2, 12) if with_segments else None
  got = attention_lib.attention(q, k, v, causal=causal, segment_ids=seg, impl="xla")
  np.testing.assert_allclose(got, loop_attention(q, k, v, seg, causal), atol=1e-5, rtol=1e-5)


def test_pallas_impl_matches_xla():
  """impl="pallas" picks interpret mode on CPU by itself and agrees with the reference."""
  q, k, v = random_qkv(1, (2, 40, 2, 32))
  seg = packed_segments(2, 40)

  @jax.jit
  def out_and_grads(q, k, v):
    def run(impl):
      f = lambda q, k, v: attention_lib.attention(q, k, v, segment_ids=seg, impl=impl)
      loss = lambda q, k, v: (f(q, k, v) ** 2).sum()
      return (f(q, k, v), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
    return run("pallas"), run("xla")

  for got, want in zip(*out_and_grads(q, k, v)):
    assert_matches(got, want)


def test_xla_dropout_drops_at_the_rate_and_rescales():
  # With v = identity over keys, the output row of query t *is* its (dropped) probability row.
  B, T, rate = 4, 32, 0.3
  q, k, _ = random_qkv(2, (B, T, 1, T))
  v = jnp.broadcast_to(jnp.eye(T)[None, :, None, :], (B, T, 1, T))
  probs = attention_lib.attention(q, k, v, impl="xla")[:, :, 0]
  dropped = attention_lib.attention(q, k, v, impl="xla", dropout_rate=rate,
                                    dropout_rng=jax.random.key(0))[:, :, 0]
  visible = np.tril(np.ones((T, T), bool))[None].repeat(B, 0)
  kept = np.asarray(dropped)[visible] != 0
  assert abs((1 - kept.mean()) - rate) < 0.05
  np.testing.assert_allclose(np.asarray(dropped)[visible][kept],
                             np.asarray(probs)[visible][kept] / (1 - rate), rtol=1e-5)
  assert np.all(np.asarray(dropped)[~visible] == 0)


@pytest.mark.parametrize("impl,kwargs,error,message", [
    ("flash", {}, ValueError, "impl must be one of"),
    ("xla", dict(dropout_rate=0.1), ValueError, "dropout_rng"),
    ("pallas", dict(dropout_rate=0.1), ValueError, "dropout_rng"),
    ("cudnn", dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)), ValueError, "dropout"),
    ("cudnn", dict(segment_ids=jnp.ones((1, 8), jnp.int32)), ValueError, "packed documents"),
    ("cudnn", dict(dtype=jnp.float32), ValueError, "bf16 or fp16"),
])
def test_impls_refuse_what_they_cannot_honour(impl, kwargs, error, message):
  kwargs = dict(kwargs)
  q = jnp.zeros((1, 8, 2, 16), kwargs.pop("dtype", jnp.bfloat16))
  with pytest.raises(error, match=message):
    attention_lib.attention(q, q, q, impl=impl, **kwargs)


@pytest.mark.skipif(jax.default_backend() in ("gpu", "cuda"), reason="checks the no-GPU error")
def test_cudnn_without_a_gpu_says_so():
  q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
    attention_lib.attention(q, q, q, impl="cudnn")


def test_mismatched_shapes_raise():
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match="one \\[B, T, H, K\\] shape"):
    attention_lib.attention(q, q[:, :4], q)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_sharded_attention_matches_unsharded(impl):
  mesh = sharding.make_mesh("fsdp_tp")  # 8 fake devices: fsdp 4 x tensor 2
  q, k, v = random_qkv(3, (4, 32, 4, 32))
  seg = packed_segments(4, 32)
  layout = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  q, k, v = (jax.device_put(x, layout) for x in (q, k, v))
  attend = attention_lib.sharded_attention(mesh)

  def loss(attend_fn, q, k, v):
    return (attend_fn(q, k, v, segment_ids=seg, impl=impl) ** 2).sum()

  out = jax.jit(lambda q, k, v: attend(q, k, v, segment_ids=seg, impl=impl))(q, k, v)
  assert out.sharding.is_equivalent_to(layout, 4)
  want = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, segment_ids=seg))(q, k, v)
  assert_matches(out, want)
  grad_of = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2)))(q, k, v)
  grads, want_grads = grad_of(attend), grad_of(attention_lib.attention)
  for g, w in zip(grads, want_grads):
    assert_matches(g, w)


def test_pallas_dropout_equals_xla_dropout_from_one_key():
  """One dropout_rng gives one mask on both impls: outputs and gradients agree."""
  q, k, v = random_qkv(7, (2, 40, 2, 32))
  seg = packed_segments(2, 40)
  key = jax.random.key(11)

  @jax.jit
  def out_and_grads(q, k, v):
    def run(impl):
      f = lambda q, k, v: attention_lib.attention(q, k, v, segment_ids=seg, impl=impl,
                                                  dropout_rate=0.2, dropout_rng=key)
      loss = lambda q, k, v: (f(q, k, v) ** 2).sum()
      return (f(q, k, v), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
    return run("pallas"), run("xla")

  pallas, xla = out_and_grads(q, k, v)
  no_dropout = attention_lib.attention(q, k, v, segment_ids=seg, impl="xla")
  assert not np.allclose(xla[0], no_dropout, atol=1e-3)  # dropout did act
  for got, want in zip(pallas, xla):
    assert_matches(got, want)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_sharded_dropout_equals_unsharded(impl):
  """Each shard hashes global (batch, head) indices: the sharded mask is the unsharded one."""
  mesh = sharding.make_mesh("fsdp_tp")  # fsdp 4 x tensor 2
  q, k, v = random_qkv(8, (4, 16, 4, 16))
  key = jax.random.key(2)
  sharded = jax.jit(lambda q, k, v: attention_lib.sharded_attention(mesh)(
      q, k, v, impl=impl, dropout_rate=0.3, dropout_rng=key))(q, k, v)
  whole = attention_lib.attention(q, k, v, impl="xla", dropout_rate=0.3, dropout_rng=key)
  assert_matches(sharded, whole)


def test_auto_impl_is_the_kernel_on_gpu_only():
  assert attention_lib.resolve_impl("auto", "gpu") == "pallas"
  assert attention_lib.resolve_impl("auto", "cuda") == "pallas"
  assert attention_lib.resolve_impl("auto", "cpu") == "xla"
  assert attention_lib.resolve_impl("xla", "gpu") == "xla"


def test_sharded_dropout_differs_across_shards():
  """Every shard folds its position into the key: identical rows on different devices must not
  share one dropout mask."""
  mesh = sharding.make_mesh("fsdp_tp")
  q, k, v = (jnp.broadcast_to(x[:1], (4, 16, 2, 16)) for x in random_qkv(4, (1, 16, 2, 16)))
  out = attention_lib.sharded_attention(mesh)(q, k, v, impl="xla", dropout_rate=0.5,
                                              dropout_rng=jax.random.key(1))
  rows = np.asarray(out)
  assert all(not np.array_equal(rows[0], rows[b]) for b in range(1, 4))


@on_gpu
@pytest.mark.parametrize("impl", ["cudnn", "pallas"])
def test_gpu_impls_match_xla(impl):
  q, k, v = random_qkv(5, (2, 256, 4, 64), jnp.bfloat16)
  got = attention_lib.attention(q, k, v, impl=impl)
  want = attention_lib.attention(q, k, v, impl="xla")
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=2e-2, rtol=2e-2)


def test_kernel_impls_run_per_shard_under_the_trainer_mesh():
  """Inside sharding.activation_sharding (as the trainer traces), impl="pallas" goes through
  shard_map over batch and heads by itself, and still equals the XLA path."""
  mesh, rules = sharding.make_mesh("fsdp_tp"), sharding.RULES["fsdp_tp"]
  q, k, v = random_qkv(6, (4, 24, 4, 16))
  seg = packed_segments(4, 24)

  def attend(impl):
    def run(q, k, v):
      with sharding.activation_sharding(mesh, rules):
        return attention_lib.attention(q, k, v, segment_ids=seg, impl=impl)
    return jax.jit(run)

  assert "sdy.manual_computation" in attend("pallas").lower(q, k, v).as_text()
  assert_matches(attend("pallas")(q, k, v), attend("xla")(q, k, v))
