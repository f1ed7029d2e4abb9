"""Tokenizers: lossless on every .py file of the installed standard library; HF tokenizer.json."""

import pathlib
import sysconfig
import time
import tokenize

import pytest

from phi1 import tokenizer as tk


def _stdlib_py_files():
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(f for f in root.rglob("*.py") if "site-packages" not in f.parts)


def _read_source(path: pathlib.Path) -> str:
  """Source text as Python reads it (PEP 263 coding cookie), replacement chars for invalid bytes.

  Only test/tokenizedata/badsyntax_pep3120.py (deliberately invalid UTF-8) needs the fallback.
  """
  try:
    with tokenize.open(path) as f:
      return f.read()
  except SyntaxError:
    return path.read_bytes().decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def stdlib_texts():
  files = _stdlib_py_files()
  assert len(files) > 1000, f"expected the standard library, found {len(files)} files"
  return [_read_source(f) for f in files]


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory, stdlib_texts):
  # Training on every 10th file keeps this fast; the round trip below runs on all files.
  model = tmp_path_factory.mktemp("sp") / "code.model"
  return tk.train_sentencepiece(stdlib_texts[::10], model, vocab_size=2048)


def test_sentencepiece_round_trips_every_stdlib_file(sp_tokenizer, stdlib_texts):
  start = time.perf_counter()
  ids = sp_tokenizer.encode_batch(stdlib_texts)
  decoded = sp_tokenizer.decode_batch(ids)
  seconds = time.perf_counter() - start
  mismatched = [i for i, (a, b) in enumerate(zip(stdlib_texts, decoded)) if a != b]
  assert not mismatched, f"{len(mismatched)} of {len(stdlib_texts)} files did not round-trip"
  n_chars = sum(map(len, stdlib_texts))
  n_tokens = sum(map(len, ids))
  assert n_tokens < n_chars / 2  # a real BPE, not bytes
  print(f"\n{len(stdlib_texts)} files, {n_chars / 1e6:.1f}M chars -> {n_tokens / 1e6:.2f}M tokens, "
        f"encode+decode {seconds:.1f}s")


@pytest.mark.parametrize("text", [
    "",
    "\tif x:\n\t\treturn  1\r\n",
    "    def f(self):\n        return self.x\n\n\n",
    "trailing spaces   \n   \n",
    "literal \u2581 marks \u2581\u2581 and \u2581",
    "é中文😀 \x00 \x7f \u200b",
    "<|endoftext|> inside a document",
])
def test_sentencepiece_round_trips_edge_cases(sp_tokenizer, text):
  ids = sp_tokenizer.encode(text)
  assert sp_tokenizer.decode(ids) == text
  assert sp_tokenizer.eos_id not in ids, "document text must never produce the separator"
  assert all(0 <= i < sp_tokenizer.vocab_size for i in ids)


def test_sentencepiece_learns_indentation_and_eos(sp_tokenizer):
  assert sp_tokenizer.vocab_size == 2048
  assert sp_tokenizer.id_to_piece(sp_tokenizer.eos_id) == tk.EOS_TOKEN
  whitespace_pieces = {
      sp_tokenizer.id_to_piece(i) for i in range(sp_tokenizer.vocab_size)
      if sp_tokenizer.id_to_piece(i).replace("\u2581", " ").isspace()}
  assert "\u2581" * 8 in whitespace_pieces and "\n" in whitespace_pieces
  # Eight spaces of indentation cost one token, not eight.
  assert len(sp_tokenizer.encode("        ")) == 1


def test_sentencepiece_training_is_deterministic(tmp_path, stdlib_texts):
  texts = stdlib_texts[::200]
  a = tk.train_sentencepiece(texts, tmp_path / "a.model", vocab_size=600)
  b = tk.train_sentencepiece(texts, tmp_path / "b.model", vocab_size=600)
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert a.fingerprint == b.fingerprint


def _write_byte_level_bpe(directory: pathlib.Path, texts) -> pathlib.Path:
  """A small GPT-2/CodeGen-style byte-level BPE, saved as tokenizer.json (no hub access)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[tk.EOS_TOKEN],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.add_special_tokens(["<|pad_a|>", "<|pad_b|>"])  # like CodeGen's added tokens past the BPE
  path = directory / "tokenizer.json"
  tok.save(str(path))
  return path


def test_hf_tokenizer_json_loads_and_round_trips(tmp_path, stdlib_texts):
  path = _write_byte_level_bpe(tmp_path, stdlib_texts[::50])
  for where in (path, tmp_path):  # the file, or a directory holding it
    tok = tk.load_tokenizer(where)
    assert isinstance(tok, tk.HFTokenizer)
    assert tok.vocab_size == 702  # added tokens count: the model's embedding must cover them
    assert tok.eos_id == 0
  sample = stdlib_texts[::7] + ["<|endoftext|> is text here", "\t\r\n  \u2581 😀"]
  ids = tok.encode_batch(sample)
  assert tok.decode_batch(ids) == sample
  assert tok.encode(sample[0]) == ids[0]
  assert tok.eos_id not in tok.encode("<|endoftext|> is text here")
  assert tok.decode([tok.eos_id]) == tk.EOS_TOKEN


def test_load_tokenizer_picks_by_file(tmp_path, sp_tokenizer):
  assert isinstance(tk.load_tokenizer(sp_tokenizer.path), tk.SentencePieceTokenizer)
  directory = pathlib.Path(sp_tokenizer.path).parent
  assert isinstance(tk.load_tokenizer(directory), tk.SentencePieceTokenizer)


def test_load_tokenizer_errors_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tk.load_tokenizer(tmp_path / "nope.model")
  (tmp_path / "vocab.txt").write_text("x")
  with pytest.raises(ValueError, match="expected \\*.model"):
    tk.load_tokenizer(tmp_path / "vocab.txt")
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json"):
    tk.load_tokenizer(tmp_path)
  with pytest.raises(ValueError, match="must end in .model"):
    tk.train_sentencepiece(["x"], tmp_path / "bad.bin")


def test_sentencepiece_model_without_eos_is_rejected(tmp_path):
  import sentencepiece as spm

  spm.SentencePieceTrainer.train(sentence_iterator=iter(["def f(x): return x"] * 50),
                                 model_prefix=str(tmp_path / "plain"), vocab_size=30,
                                 model_type="bpe", minloglevel=2)
  with pytest.raises(ValueError, match="no '<\\|endoftext\\|>' piece"):
    tk.load_tokenizer(tmp_path / "plain.model")


def test_decode_accepts_numpy_ids(sp_tokenizer):
  import numpy as np

  ids = np.asarray(sp_tokenizer.encode("x = 1\n"), dtype=np.int32)
  assert sp_tokenizer.decode(ids) == "x = 1\n"
