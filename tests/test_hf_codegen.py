"""CodeGen interop: a transformers CodeGenForCausalLM loads as a phi model with the same logits."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from phi1 import generate as gen  # noqa: E402
from phi1 import hf  # noqa: E402
from phi1.model import Phi1, Phi1Config  # noqa: E402

# 8 heads over CodeGen's 4 qkv shards: 2 heads per shard, so a wrong head permutation shows.
CODEGEN_CONFIG = dict(vocab_size=128, n_positions=128, n_embd=128, n_layer=2, n_head=8,
                      rotary_dim=8, n_inner=192, bos_token_id=None, eos_token_id=None)
TOKENS = np.random.default_rng(0).integers(0, 128, size=(3, 21))


def _random_codegen():
  torch.manual_seed(0)
  model = transformers.CodeGenForCausalLM(transformers.CodeGenConfig(**CODEGEN_CONFIG))
  # Widen every weight (LayerNorms included) so a mapping mistake visibly moves the logits.
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_ln = ".ln_" in name
      p.copy_(torch.randn_like(p) * (0.3 if is_ln else 0.15)
              + (1.0 if is_ln and name.endswith("weight") else 0.0))
  return model.eval()


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("codegen"))
  _random_codegen().save_pretrained(path)
  return path, transformers.CodeGenForCausalLM.from_pretrained(
      path, attn_implementation="eager").eval()


def test_config_maps_codegen_fields(saved):
  config = hf.config_from_hf(json.load(open(os.path.join(saved[0], hf.CONFIG_FILE))))
  assert (config.d_model, config.n_layers, config.n_heads, config.d_ff, config.rotary_dim,
          config.max_seq_len, config.rotary_style, config.attn_bias) == (
              128, 2, 8, 192, 8, 128, "gptj", False)


def test_logits_match_transformers(saved):
  path, reference = saved
  model = hf.from_hf(path)
  assert not hasattr(model.layers[0].self_attn.q_proj, "bias") or \
      model.layers[0].self_attn.q_proj.bias is None  # CodeGen has no attention biases
  expected = _logits(reference, TOKENS)
  assert np.abs(expected).max() > 1.0  # not a degenerate comparison
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(TOKENS))), expected, atol=1e-4, rtol=0)


def test_greedy_generation_with_kv_cache_matches_transformers(saved):
  path, reference = saved
  prompt = TOKENS[0, :6].tolist()
  ours = gen.generate_tokens(hf.from_hf(path), [prompt], max_new_tokens=16)[0]
  with torch.no_grad():
    out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                             do_sample=False, max_new_tokens=16, min_new_tokens=16,
                             pad_token_id=0, eos_token_id=None)
  assert ours == out[0, len(prompt):].tolist()


def test_round_trip_writes_a_codegen_checkpoint(saved, tmp_path):
  path, reference = saved
  hf.to_hf(hf.from_hf(path), str(tmp_path), eos_id=5)
  written = json.load(open(tmp_path / hf.CONFIG_FILE))
  assert (written["model_type"], written["eos_token_id"]) == ("codegen", 5)
  reloaded = transformers.CodeGenForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager").eval()
  for (name, a), (_, b) in zip(reference.state_dict().items(), reloaded.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)  # bit-exact weights


def test_layout_without_a_transformers_model_is_refused(tmp_path):
  model = Phi1(Phi1Config.tiny(rotary_style="gptj"), rngs=nnx.Rngs(0))  # gptj with biases
  with pytest.raises(ValueError, match="rotary_style='gptj' with attn_bias=True"):
    hf.to_hf(model, str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("field, value, match", [
    ("rotary_dim", None, "rotary_dim=null"), ("activation_function", "relu", "activation"),
    ("tie_word_embeddings", True, "tie_word_embeddings"), ("n_embd", 130, "divisible by 4"),
])
def test_unsupported_codegen_config_names_the_field(saved, field, value, match):
  config = json.load(open(os.path.join(saved[0], hf.CONFIG_FILE)))
  with pytest.raises(ValueError, match=match):
    hf.config_from_hf({**config, field: value})


def test_rotary_styles_are_one_rotation_on_permuted_dims():
  from phi1.model import rotary
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5, 2, 8)), jnp.float32)
  pos = jnp.arange(5)[None]
  # GPT-J's pair (2i, 2i+1) is NeoX's pair (i, i + R/2): permute the rotary dims and compare.
  to_neox = np.array([0, 2, 4, 6, 1, 3, 5, 7])
  gptj = rotary(x, pos, 8, 10000.0, "gptj")
  neox = rotary(x[..., to_neox], pos, 8, 10000.0, "neox")
  np.testing.assert_allclose(np.asarray(gptj[..., to_neox]), np.asarray(neox), atol=1e-6)
  assert np.abs(np.asarray(gptj - x)).max() > 0.1
