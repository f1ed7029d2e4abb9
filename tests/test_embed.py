"""Embedders: the phi1 mean-pooled embedder on a tiny random model, the hashing embedder, and that
data_gen stays JAX-free unless the phi1 embedder is asked for."""

import subprocess
import sys

import numpy as np
import pytest

from data_gen.filtering import embed

TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n",
         "class Stack:\n    def __init__(self):\n        self.items = []\n" * 3, "x = 1\n",
         "for i in range(10):\n    print(i * i)\n" * 6]


@pytest.fixture(scope="module")
def tiny():
  from flax import nnx
  from phi1.model import Phi1, Phi1Config
  model = Phi1(Phi1Config.tiny(), rngs=nnx.Rngs(0))
  return model, embed.Phi1Embedder(model, embed.byte_encoder(model.config.vocab_size),
                                   batch_size=2, buckets=(16, 64, 256))


def test_phi1_embedder_is_masked_mean_of_hidden_states(tiny):
  model, embedder = tiny
  x = embedder.embed(TEXTS)
  assert x.shape == (len(TEXTS), model.config.d_model) and x.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
  from flax import nnx
  hidden = nnx.jit(lambda m, tokens: m.hidden_states(tokens))
  for i, text in enumerate(TEXTS):  # unpadded, unbatched reference
    ids = embed.byte_encoder(model.config.vocab_size)(text)[:256]
    h = np.asarray(hidden(model, np.array([ids], np.int32)))[0]
    ref = h.mean(0) / np.linalg.norm(h.mean(0))
    np.testing.assert_allclose(x[i], ref, atol=2e-5)


def test_phi1_embedder_batch_invariant_and_truncates(tiny):
  _, embedder = tiny
  together = embedder.embed(TEXTS)
  alone = np.concatenate([embedder.embed([t]) for t in TEXTS])
  np.testing.assert_allclose(together, alone, atol=2e-5)
  long = "y = 2\n" * 200  # 1200 bytes > largest bucket (256): first 256 tokens are kept
  np.testing.assert_allclose(embedder.embed([long]), embedder.embed([long[:256]]), atol=2e-5)


def test_phi1_embedder_rejects_out_of_vocab_ids(tiny):
  model, _ = tiny
  bad = embed.Phi1Embedder(model, lambda t: [10_000], batch_size=1, buckets=(16,))
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    bad.embed(["x"])


def test_hashing_embedder_is_deterministic_and_meaningful():
  e = embed.HashingEmbedder(dim=512)
  x = e.embed(TEXTS)
  assert x.shape == (len(TEXTS), 512)
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(x, embed.HashingEmbedder(dim=512).embed(TEXTS))
  near = e.embed(["def add(x, y):\n    return x + y\n"])[0]
  assert np.argmax(x @ near) == 0


def test_make_embedder_specs():
  assert embed.make_embedder("hashing:64").dim == 64
  with pytest.raises(ValueError, match="unknown embedder"):
    embed.make_embedder("word2vec")
  with pytest.raises(ValueError, match="needs a checkpoint"):
    embed.make_embedder("phi1")
  try:
    import sentence_transformers  # noqa: F401  (only whether it is installed)
  except ImportError:
    with pytest.raises(ImportError, match="pip install sentence-transformers"):
      embed.make_embedder("sentence-transformers:all-MiniLM-L6-v2")


def test_data_gen_does_not_import_jax():
  code = ("import sys\n"
          "import data_gen.decontaminate, data_gen.filtering.cli, data_gen.filtering.pipeline\n"
          "import data_gen.filtering.embed\n"
          "data_gen.filtering.embed.HashingEmbedder().embed(['x = 1'])\n"
          "data_gen.decontaminate.load_problems(['humaneval', 'mbpp'])\n"
          "assert 'jax' not in sys.modules, 'data_gen imported jax'\n")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def codegen_dir(tmp_path_factory):
  """A small random CodeGenForCausalLM and a byte-level BPE tokenizer, saved as transformers and
  tokenizers save them (the shape of a codegen-350M-mono download)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  path = tmp_path_factory.mktemp("codegen")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path / "tokenizer.json"))
  torch.manual_seed(0)
  model = transformers.CodeGenForCausalLM(transformers.CodeGenConfig(
      vocab_size=320, n_positions=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=128,
      bos_token_id=None, eos_token_id=None))
  model.save_pretrained(str(path))
  return path, model.eval(), tok


def test_codegen_embedder_is_mean_pooled_final_hidden_states(codegen_dir):
  """The paper's embedder spec: `codegen:DIR` equals the masked mean of transformers' CodeGen final
  (ln_f) hidden states over the document's tokens, L2-normalised."""
  import torch
  path, reference, tok = codegen_dir
  embedder = embed.make_embedder(f"codegen:{path}")
  assert embedder.name == f"codegen:{path}" and embedder.dim == 64
  x = embedder.embed(TEXTS)
  for i, text in enumerate(TEXTS):
    ids = tok.encode(text).ids
    assert embedder.encode(text) == ids  # phi-1's tokenizer is CodeGen's: it also counts tokens
    with torch.no_grad():
      h = reference.transformer(torch.tensor([ids])).last_hidden_state[0].numpy()
    ref = h.mean(0) / np.linalg.norm(h.mean(0))
    np.testing.assert_allclose(x[i], ref, atol=1e-4)


def test_codegen_spec_refuses_what_is_not_codegen(tmp_path, codegen_dir):
  with pytest.raises(FileNotFoundError, match="CodeGen-350M-mono"):
    embed.check_spec(f"codegen:{tmp_path / 'missing'}")
  (tmp_path / "phi").mkdir()
  (tmp_path / "phi" / "config.json").write_text('{"model_type": "phi"}')
  with pytest.raises(ValueError, match="not CodeGen"):
    embed.check_spec(f"codegen:{tmp_path / 'phi'}")
  embed.check_spec(f"codegen:{codegen_dir[0]}")  # the real thing passes
