"""HF interop: a transformers PhiForCausalLM and our model agree on logits and greedy generation."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from phi1 import generate as gen  # noqa: E402
from phi1 import hf  # noqa: E402

HF_CONFIG = dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=128,
                 rope_theta=500.0)
TOKENS = np.random.default_rng(0).integers(0, 128, size=(3, 21))


def _random_phi(**overrides):
  torch.manual_seed(0)
  model = transformers.PhiForCausalLM(transformers.PhiConfig(**{**HF_CONFIG, **overrides}))
  # Default init (std 0.02, LayerNorm 1/0) makes near-uniform logits that hide mapping mistakes:
  # widen every weight, LayerNorms included, so each tensor visibly moves the output.
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if "layernorm" in name else 0.15)
              + (1.0 if "layernorm" in name and name.endswith("weight") else 0.0))
  return model.eval()


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("phi"))
  model = _random_phi()
  model.save_pretrained(path)
  return path, transformers.PhiForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def test_config_maps_every_field(saved):
  path, _ = saved
  config = hf.config_from_hf(json.load(open(os.path.join(path, "config.json"))))
  assert (config.vocab_size, config.d_model, config.n_layers, config.n_heads, config.d_ff,
          config.rotary_dim, config.rope_theta, config.max_seq_len) == (128, 64, 2, 4, 256, 8,
                                                                         500.0, 128)


def test_logits_match_transformers(saved):
  path, reference = saved
  ours = np.asarray(hf.from_hf(path)(jnp.asarray(TOKENS)))
  expected = _hf_logits(reference, TOKENS)
  assert np.abs(expected).max() > 1.0  # not a degenerate comparison
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_compute_dtype_and_config_overrides(saved):
  path, _ = saved
  model = hf.from_hf(path, dtype="bfloat16", max_seq_len=64)
  assert (model.config.dtype, model.config.max_seq_len) == ("bfloat16", 64)
  assert model.lm_head.kernel[...].dtype == jnp.float32  # parameters stay fp32
  with pytest.raises(TypeError):
    hf.from_hf(path, not_a_field=1)


def test_greedy_generation_matches_transformers_generate(saved):
  path, reference = saved
  prompts = [TOKENS[0, :5].tolist(), TOKENS[1].tolist()]
  ours = gen.generate_tokens(hf.from_hf(path), prompts, max_new_tokens=32)
  for prompt, tokens in zip(prompts, ours):
    with torch.no_grad():
      out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                               do_sample=False, max_new_tokens=32, min_new_tokens=32,
                               pad_token_id=0, eos_token_id=None)
    assert tokens == out[0, len(prompt):].tolist()


def test_round_trip_to_hf_gives_the_same_logits(saved, tmp_path):
  path, reference = saved
  hf.to_hf(hf.from_hf(path), str(tmp_path), eos_id=7)
  reloaded = transformers.PhiForCausalLM.from_pretrained(str(tmp_path),
                                                         attn_implementation="eager").eval()
  assert reloaded.config.eos_token_id == 7
  np.testing.assert_allclose(_hf_logits(reloaded, TOKENS), _hf_logits(reference, TOKENS),
                             atol=1e-5, rtol=0)


def test_sharded_checkpoint_loads(saved, tmp_path):
  path, reference = saved
  reference.save_pretrained(str(tmp_path), max_shard_size="100KB")
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert os.path.exists(tmp_path / hf.INDEX_FILE) and len(shards) > 1
  ours = np.asarray(hf.from_hf(str(tmp_path))(jnp.asarray(TOKENS)))
  np.testing.assert_allclose(ours, _hf_logits(reference, TOKENS), atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_loads(tmp_path):
  reference = _random_phi()
  reference.to(torch.bfloat16).save_pretrained(str(tmp_path))  # numpy has no bf16: ml_dtypes path
  model = hf.from_hf(str(tmp_path))
  assert model.embed_tokens.embedding[...].dtype == jnp.float32
  expected = reference.model.embed_tokens.weight.float().detach().numpy()
  np.testing.assert_array_equal(np.asarray(model.embed_tokens.embedding[...]), expected)


@pytest.mark.parametrize("field, value", [
    ("qk_layernorm", True), ("num_key_value_heads", 2), ("hidden_act", "gelu"),
    ("tie_word_embeddings", True), ("rope_scaling", {"type": "linear", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
    ("model_type", "phi-msft"),
])
def test_unsupported_config_names_the_field(saved, field, value):
  path, _ = saved
  config = json.load(open(os.path.join(path, "config.json")))
  with pytest.raises(ValueError, match=field):
    hf.config_from_hf({**config, field: value})


def _copy(path, tmp_path):
  target = tmp_path / "ckpt"
  shutil.copytree(path, target)
  return target


def test_missing_weights_say_what_is_missing(saved, tmp_path):
  target = _copy(saved[0], tmp_path)
  os.remove(target / hf.WEIGHTS_FILE)
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.from_hf(str(target))
  os.remove(target / hf.CONFIG_FILE)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.from_hf(str(target))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.from_hf(str(tmp_path / "nowhere"))


def test_missing_shard_is_named(saved, tmp_path):
  saved[1].save_pretrained(str(tmp_path), max_shard_size="100KB")
  shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[-1]
  os.remove(tmp_path / shard)
  with pytest.raises(FileNotFoundError, match=shard):
    hf.from_hf(str(tmp_path))


def test_corrupt_weights_are_reported(saved, tmp_path):
  target = _copy(saved[0], tmp_path)
  weights = target / hf.WEIGHTS_FILE
  weights.write_bytes(weights.read_bytes()[:1000])
  with pytest.raises(hf.CheckpointError, match="corrupt"):
    hf.from_hf(str(target))


def test_checkpoint_not_matching_its_config_is_reported(saved, tmp_path):
  target = _copy(saved[0], tmp_path)
  config = json.load(open(target / hf.CONFIG_FILE))
  json.dump({**config, "num_hidden_layers": 3}, open(target / hf.CONFIG_FILE, "w"))
  with pytest.raises(hf.CheckpointError, match="missing tensor model.layers.2"):
    hf.from_hf(str(target))
  json.dump({**config, "intermediate_size": 128}, open(target / hf.CONFIG_FILE, "w"))
  with pytest.raises(hf.CheckpointError, match="fc1.weight has shape"):
    hf.from_hf(str(target))


def test_convert_writes_only_what_phis_class_holds(tmp_path, capsys):
  """`phi1 convert --to-hf`: the stock model loads with no missing or unexpected weights and the
  same logits; another MLP kind or a model_fn variant is one line naming it, nothing written."""
  import dataclasses

  from flax import nnx
  from phi1 import checkpoint, cli
  from phi1.model import Phi1, Phi1Config
  from test_model_fn import SwiGLUPhi1

  config = Phi1Config.tiny(vocab_size=128, max_seq_len=64)
  stock = Phi1(config, rngs=nnx.Rngs(1))
  checkpoint.export_params(stock, tmp_path / "stock")
  assert cli.main(["convert", "--to-hf", str(tmp_path / "stock"), "--out",
                   str(tmp_path / "hf")]) == 0
  reloaded, info = transformers.PhiForCausalLM.from_pretrained(
      str(tmp_path / "hf"), attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  np.testing.assert_allclose(_hf_logits(reloaded.eval(), TOKENS),
                             np.asarray(stock(jnp.asarray(TOKENS))), atol=1e-4, rtol=0)

  swiglu = Phi1(dataclasses.replace(config, mlp="swiglu"), rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match="MLP kind 'swiglu'"):
    hf.to_hf(swiglu, str(tmp_path / "never"))
  with pytest.raises(ValueError, match="SwiGLUPhi1 .a model_fn variant"):
    hf.to_hf(SwiGLUPhi1(config, rngs=nnx.Rngs(1)), str(tmp_path / "never"))
  assert not (tmp_path / "never").exists()
  checkpoint.export_params(swiglu, tmp_path / "swiglu")
  capsys.readouterr()
  assert cli.main(["convert", "--to-hf", str(tmp_path / "swiglu"), "--out",
                   str(tmp_path / "never")]) == 1
  captured = capsys.readouterr()
  assert "wrote" not in captured.out and len(captured.err.strip().splitlines()) == 1
  assert "MLP kind 'swiglu'" in captured.err and not (tmp_path / "never").exists()


def test_a_scanned_model_loads_from_and_exports_to_one_tensor_per_layer(saved, tmp_path):
  """The full-size recipes scan stacked blocks; HF holds one tensor per layer. Loading stacks them,
  exporting unstacks them: the same logits both ways."""
  path, reference = saved
  scanned = hf.from_hf(path, scan_layers=True)
  assert scanned.config.scan_layers and scanned.layers.mlp.fc1.kernel[...].shape[0] == 2
  np.testing.assert_allclose(np.asarray(scanned(jnp.asarray(TOKENS))), _hf_logits(reference, TOKENS),
                             atol=1e-4, rtol=0)
  hf.to_hf(scanned, str(tmp_path))
  reloaded = transformers.PhiForCausalLM.from_pretrained(str(tmp_path),
                                                         attn_implementation="eager").eval()
  np.testing.assert_allclose(_hf_logits(reloaded, TOKENS), _hf_logits(reference, TOKENS),
                             atol=1e-5, rtol=0)
