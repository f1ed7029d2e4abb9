"""phi-1 model: exact parameter counts, causality (plain and packed), dtypes, dropout, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from phi1 import layer_layout, model as model_lib
from phi1.model import Phi1, Phi1Config, count_params

T = 12


def tiny(**overrides):
  return Phi1Config.tiny(**{**dict(max_seq_len=32, init_std=0.2), **overrides})


@pytest.fixture(scope="module")
def tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 512, size=(2, T)), jnp.int32)


# The paper's shapes (§2.3; microsoft/phi-1's config.json): layers, width, heads, MLP width.
PAPER_SHAPES = {"phi1": (24, 2048, 32, 8192), "phi1_small": (20, 1024, 16, 4096)}


@pytest.mark.parametrize("preset", ["phi1", "phi1_small"])
def test_parameter_counts_equal_hf(preset):
  """Our count equals transformers' PhiForCausalLM built on the meta device (shapes, no weights),
  from the paper's shapes and from our own config's HF translation."""
  import torch
  import transformers
  from phi1 import hf

  def hf_count(**config):
    with torch.device("meta"):
      model = transformers.PhiForCausalLM(transformers.PhiConfig(**config))
    return sum(p.numel() for p in model.parameters())

  layers, width, heads, mlp = PAPER_SHAPES[preset]
  paper = hf_count(vocab_size=51200, hidden_size=width, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=mlp, partial_rotary_factor=0.5,
                   max_position_embeddings=2048, tie_word_embeddings=False)
  config = getattr(Phi1Config, preset)()
  translated = {k: v for k, v in hf.config_to_hf(config).items()
                if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")}
  assert count_params(config) == paper == hf_count(**translated)


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


def test_sown_attention_probs_equal_a_reference_softmax(tokens):
  model = Phi1(tiny(n_layers=2), rngs=nnx.Rngs(0))
  model.eval()
  logits, inter = model.capture(tokens)
  np.testing.assert_allclose(logits, model(tokens), rtol=1e-6, atol=1e-6)
  # Reference: layer 0's q and k by hand from its weights, then a plain causal softmax.
  attn, c = model.layers[0].self_attn, model.config
  h = model.layers[0].input_layernorm(model.embed_tokens(tokens).astype(jnp.float32))
  B = tokens.shape[0]
  q = (h @ attn.q_proj.kernel[...] + attn.q_proj.bias[...]).reshape(B, T, c.n_heads, c.head_dim)
  k = (h @ attn.k_proj.kernel[...] + attn.k_proj.bias[...]).reshape(B, T, c.n_heads, c.head_dim)
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  from phi1.model import rotary
  q, k = (rotary(x, positions, c.rotary_dim, c.rope_theta) for x in (q, k))
  scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(c.head_dim)
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
  expected = np.exp(scores - scores.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  (probs,) = inter["layers"][0]["self_attn"]["attention_probs"].get_value()
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
  (out,) = inter["layers"][1]["output"].get_value()
  assert out.shape == (B, T, c.d_model)


def test_sowing_is_off_outside_capture_and_leaves_no_state(tokens):
  model = Phi1(tiny(n_layers=1), rngs=nnx.Rngs(0))
  model.capture(tokens)
  model(tokens)
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))
  assert not model.layers[0].self_attn.sow_intermediates


def _stack_into(scanned, unrolled):
  """Copy the unrolled model's parameters into the scanned model (layer i -> index i)."""
  per_layer = [nnx.state(block, nnx.Param) for block in unrolled.layers]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  nnx.update(scanned.layers, stacked)
  for name in ("embed_tokens", "final_layernorm", "lm_head"):
    nnx.update(getattr(scanned, name), nnx.state(getattr(unrolled, name), nnx.Param))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_gives_the_unrolled_loss_and_grads(tokens, remat):
  unrolled = Phi1(tiny(n_layers=3, remat=remat), rngs=nnx.Rngs(0))
  scanned = Phi1(tiny(n_layers=3, remat=remat, scan_layers=True), rngs=nnx.Rngs(1))
  _stack_into(scanned, unrolled)
  targets = jnp.roll(tokens, -1, axis=1)

  def loss(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), targets).mean()

  (loss_u, grads_u), (loss_s, grads_s) = (nnx.value_and_grad(loss)(m) for m in (unrolled, scanned))
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  stacked_grads = jax.tree.map(lambda *xs: jnp.stack(xs), *[g for g in grads_u.layers.values()])
  for a, b in zip(jax.tree.leaves(grads_s.layers), jax.tree.leaves(stacked_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # blocks() slices the stack back into per-layer modules (the KV-cache decode path uses them).
  np.testing.assert_allclose(scanned.blocks()[2].mlp.fc1.kernel[...],
                             unrolled.layers[2].mlp.fc1.kernel[...])


def test_mlp_is_chosen_by_config():
  gelu = Phi1(tiny(n_layers=1), rngs=nnx.Rngs(0))
  swiglu = Phi1(tiny(n_layers=1, mlp="swiglu"), rngs=nnx.Rngs(0))
  assert sorted(nnx.state(gelu.layers[0].mlp, nnx.Param)) == ["fc1", "fc2"]
  assert sorted(nnx.state(swiglu.layers[0].mlp, nnx.Param)) == ["w1", "w2", "w3"]
  with pytest.raises(ValueError, match="mlp must be one of"):
    tiny(mlp="relu")


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_flops_count_every_matmul_kernel(mlp):
  from phi1 import flops
  config = tiny(n_layers=2, mlp=mlp)
  model = Phi1(config, rngs=nnx.Rngs(0))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  kernels = sum(v.get_value().size for path, v in flat if path[-1] == "kernel")
  assert flops.matmul_params(config) == kernels


class _NoRotaryAttention(model_lib.Attention):
  """An attention variant for the registry test: positions are not rotated in (a NoPE block)."""

  def rotate(self, q_BTHK, k_BTHK, positions_BT):
    return q_BTHK, k_BTHK


def test_an_attention_variant_registers_and_runs_under_scan_layers(tokens):
  """The model docstring's recipe: register a class, name it in the config; it is built inside
  each block, so the scanned stack (one vmapped block) holds the variant as well."""
  model_lib.register_attention("test_no_rotary", _NoRotaryAttention)
  model_lib.register_attention("test_no_rotary", _NoRotaryAttention)  # same class: a no-op
  with pytest.raises(ValueError, match="already registered"):
    model_lib.register_attention("test_no_rotary", model_lib.Attention)
  with pytest.raises(ValueError, match="attention must be one of"):
    tiny(attention="no_such_attention")

  stock = Phi1(tiny(n_layers=2), rngs=nnx.Rngs(0))
  unrolled = Phi1(tiny(n_layers=2, attention="test_no_rotary"), rngs=nnx.Rngs(0))
  scanned = Phi1(tiny(n_layers=2, attention="test_no_rotary", scan_layers=True), rngs=nnx.Rngs(1))
  assert isinstance(scanned.layers.self_attn, _NoRotaryAttention)
  assert all(isinstance(b.self_attn, _NoRotaryAttention) for b in scanned.blocks())
  _stack_into(scanned, unrolled)
  np.testing.assert_allclose(scanned(tokens), unrolled(tokens), rtol=1e-5, atol=1e-5)
  # Same parameters as the stock model, different positions handling: the variant ran.
  assert not np.allclose(unrolled(tokens), stock(tokens), atol=1e-3)


def test_unstack_layers_gives_the_unrolled_model(tokens):
  unrolled = Phi1(tiny(n_layers=3), rngs=nnx.Rngs(0))
  scanned = Phi1(tiny(n_layers=3, scan_layers=True), rngs=nnx.Rngs(1))
  _stack_into(scanned, unrolled)
  back = layer_layout.unstack_layers(scanned)
  assert not back.config.scan_layers and len(back.layers) == 3
  assert jax.tree.structure(nnx.state(back, nnx.Param)) == jax.tree.structure(
      nnx.state(unrolled, nnx.Param))
  np.testing.assert_allclose(back(tokens), unrolled(tokens), rtol=1e-6, atol=1e-6)
  assert layer_layout.unstack_layers(unrolled) is unrolled


class _TemperedPhi1(Phi1):
  """A model_fn variant by subclassing: same parameters, logits divided by 2."""

  def logits(self, h_BTD):
    return super().logits(h_BTD) / 2.0


@pytest.mark.parametrize("scanned_first", [False, True])
def test_layer_layout_keeps_a_subclass_variant(tokens, scanned_first):
  """Converting between layouts rebuilds the model's own class (an init_from of a model_fn run
  whose layout differs), not the stock Phi1: the variant's behaviour survives."""
  model = _TemperedPhi1(tiny(n_layers=2, scan_layers=scanned_first), rngs=nnx.Rngs(0))
  other = layer_layout.with_layer_layout(model, not scanned_first)
  assert type(other) is _TemperedPhi1 and other.config.scan_layers == (not scanned_first)
  np.testing.assert_allclose(other(tokens), model(tokens), rtol=1e-5, atol=1e-5)
  back = layer_layout.with_layer_layout(other, scanned_first)
  assert type(back) is _TemperedPhi1
  np.testing.assert_allclose(back(tokens), model(tokens), rtol=1e-5, atol=1e-5)
