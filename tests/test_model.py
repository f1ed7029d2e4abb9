"""phi-1 model: exact parameter counts, causality (plain and packed), dtypes, dropout, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from phi1.model import Phi1, Phi1Config, count_params

T = 12


def tiny(**overrides):
  return Phi1Config.tiny(**{**dict(max_seq_len=32, init_std=0.2), **overrides})


@pytest.fixture(scope="module")
def tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 512, size=(2, T)), jnp.int32)


@pytest.mark.parametrize("preset, expected", [("phi1", 1_418_270_720),
                                              ("phi1_small", 356_794_368)])
def test_parameter_counts_equal_hf(preset, expected):
  # HF's PhiForCausalLM counts for microsoft/phi-1 (1.3B) and the paper's phi-1-small (350M).
  assert count_params(getattr(Phi1Config, preset)()) == expected


class _Probe(nnx.Variable):
  """A zero added to the input embeddings: its gradient is d loss / d embedding input."""


class _ProbedEmbed(nnx.Module):

  def __init__(self, embed, shape):
    self.embed = embed
    self.probe = _Probe(jnp.zeros(shape))

  def __call__(self, tokens_BT):
    return self.embed(tokens_BT) + self.probe[...]


def _input_grads(model, tokens, segment_ids=None, positions=None):
  """[T, B, T, D]: gradient of the loss at each position t w.r.t. every input embedding."""
  model.embed_tokens = _ProbedEmbed(model.embed_tokens, (*tokens.shape, model.config.d_model))
  targets = jnp.roll(tokens, -1, axis=1)

  @nnx.jit
  def grad_at(model, t):
    def loss_at_t(model):
      logits_BTV = model(tokens, segment_ids, positions)
      losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets)
      return losses_BT[:, t].sum()
    return nnx.grad(loss_at_t, argnums=nnx.DiffState(0, _Probe))(model).embed_tokens.probe[...]

  grads = np.stack([np.asarray(grad_at(model, t)) for t in range(tokens.shape[1])])
  model.embed_tokens = model.embed_tokens.embed
  return grads


def test_causality_no_gradient_from_future_inputs(tokens):
  """nanodo's test: the loss at position t does not depend on any input after t."""
  grads = _input_grads(Phi1(tiny(), rngs=nnx.Rngs(0)), tokens)
  norms_TS = np.abs(grads).sum(axis=(1, 3))  # [loss position t, input position s]
  assert np.all(norms_TS[np.triu_indices(T, k=1)] == 0)
  assert np.all(norms_TS[np.tril_indices(T)] > 0)  # and it does depend on the past and present


def test_packed_documents_no_gradient_across_segment_boundary(tokens):
  segment_ids = jnp.asarray([[1] * 5 + [2] * 7, [1] * 8 + [2] * 3 + [0]], jnp.int32)
  positions = jnp.asarray([list(range(5)) + list(range(7)),
                           list(range(8)) + list(range(3)) + [0]], jnp.int32)
  grads = _input_grads(Phi1(tiny(), rngs=nnx.Rngs(0)), tokens, segment_ids, positions)
  norms_TBS = np.abs(grads).sum(axis=3)
  seg = np.asarray(segment_ids)
  for b in range(2):
    for t in range(T):
      for s in range(T):
        # Own input always reaches (residual stream); others only via attention within a segment.
        visible = s == t or (seg[b, t] > 0 and seg[b, s] == seg[b, t] and s < t)
        assert (norms_TBS[t, b, s] > 0) == visible, (b, t, s)


def test_packed_row_equals_documents_run_separately(tokens):
  model = Phi1(tiny(), rngs=nnx.Rngs(0))
  doc1, doc2 = tokens[:1, :5], tokens[1:, :7]
  packed = jnp.concatenate([doc1, doc2], axis=1)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 7])
  positions = jnp.asarray([list(range(5)) + list(range(7))])
  logits = np.asarray(model(packed, segment_ids, positions))
  np.testing.assert_allclose(logits[:, :5], model(doc1), atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:], model(doc2), atol=1e-5)


def test_bf16_compute_gives_float32_logits_close_to_fp32(tokens):
  fp32 = Phi1(tiny(), rngs=nnx.Rngs(0))
  bf16 = Phi1(tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  out32, out16 = fp32(tokens), bf16(tokens)
  assert out16.dtype == jnp.float32
  assert bf16.layers[0].mlp.fc1.kernel[...].dtype == jnp.float32  # parameters stay fp32
  scale = float(jnp.abs(out32).max())
  assert 0 < float(jnp.abs(out16 - out32).max()) < 0.05 * scale


def test_dropout_is_on_in_train_mode_and_off_in_eval_mode(tokens):
  model = Phi1(tiny(embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1), rngs=nnx.Rngs(0))
  model.train()
  a = model(tokens, rngs=nnx.Rngs(dropout=1))
  np.testing.assert_array_equal(a, model(tokens, rngs=nnx.Rngs(dropout=1)))  # same key, same mask
  assert not np.allclose(a, model(tokens, rngs=nnx.Rngs(dropout=2)))
  model.eval()
  c = model(tokens)  # no key needed: dropout is off
  np.testing.assert_array_equal(c, model(tokens, rngs=nnx.Rngs(dropout=2)))
  assert not np.allclose(a, c)
  for rate in ("embd_dropout", "attn_dropout", "resid_dropout"):  # each rate is wired in
    one = Phi1(tiny(**{rate: 0.5}), rngs=nnx.Rngs(0))
    one.train()
    assert not np.allclose(one(tokens, rngs=nnx.Rngs(dropout=1)),
                           one(tokens, rngs=nnx.Rngs(dropout=2))), rate


def _loss_and_grads(config, tokens):
  model = Phi1(config, rngs=nnx.Rngs(0))
  def loss(model):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
  return nnx.jit(nnx.value_and_grad(loss))(model)


@pytest.fixture(scope="module")
def no_remat(tokens):
  return _loss_and_grads(tiny(), tokens)


@pytest.mark.parametrize("policy", ["dots", "full"])
def test_remat_gives_the_same_loss_and_grads(tokens, no_remat, policy):
  loss_ref, grads_ref = no_remat
  loss_remat, grads_remat = _loss_and_grads(tiny(remat=policy), tokens)
  np.testing.assert_allclose(loss_remat, loss_ref, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), grads_remat, grads_ref)


@pytest.mark.parametrize("bad, match", [
    (jnp.zeros((2, 4), jnp.float32), "integer"),
    (jnp.zeros((8,), jnp.int32), r"\[batch, seq\]"),
    (jnp.full((1, 4), 512, jnp.int32), "vocab_size"),
    (jnp.full((1, 4), -1, jnp.int32), "vocab_size"),
    (jnp.zeros((1, 33), jnp.int32), "max_seq_len"),
])
def test_bad_tokens_raise_clear_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    Phi1(tiny(), rngs=nnx.Rngs(0))(bad)


def test_mismatched_segment_ids_raise(tokens):
  with pytest.raises(ValueError, match="segment_ids shape"):
    Phi1(tiny(), rngs=nnx.Rngs(0))(tokens, segment_ids=tokens[:, :3])


def test_bad_config_raises():
  with pytest.raises(ValueError, match="divisible"):
    Phi1Config.tiny(n_heads=3)
  with pytest.raises(ValueError, match="rotary_dim"):
    Phi1Config.tiny(rotary_dim=64)
