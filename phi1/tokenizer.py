"""Tokenizers behind one interface: a whitespace-exact SentencePiece BPE and HF `tokenizer.json`.

phi-1 uses the CodeGen-350M-mono byte-level BPE (50,295 tokens, padded to a 51,200-row embedding;
paper §2.3), loaded here from its `tokenizer.json` through the `tokenizers` package. For corpora we
build ourselves (the CPU demo) we train a SentencePiece BPE that is lossless on source code:
indentation, tabs, newlines and any Unicode round-trip exactly (byte fallback, identity
normalisation, whitespace-only pieces such as 4/8/12-space indents).

Both tokenizers treat the literal text "<|endoftext|>" inside a document as ordinary characters:
only `eos_id` appended by the data pipeline separates documents, so a file that happens to contain
the string cannot inject a document boundary.

    tok = load_tokenizer("tok.model")          # or "tokenizer.json", or a directory holding one
    ids = tok.encode("def f():\\n\\treturn 1\\n")
    assert tok.decode(ids) == "def f():\\n\\treturn 1\\n"
    assert model_config.vocab_size >= tok.vocab_size     # the embedding may have spare rows
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence

from phi1 import atomic

EOS_TOKEN = "<|endoftext|>"

# SentencePiece escapes " " as U+2581 and unescapes every U+2581 on decode, so a literal U+2581 in
# the text would come back as a space. We route literal U+2581 through its byte-fallback pieces.
_SP_SPACE = "\u2581"
# SentencePiece skips training sentences longer than max_sentence_length bytes, so training text is
# cut at line boundaries into pieces no longer than this (a line longer than it is kept whole and
# skipped by the trainer; it still round-trips at encode time through byte fallback).
_SP_TRAIN_CHUNK_CHARS = 2048


class Tokenizer(abc.ABC):
  """What the data pipeline, generation and evals need from a tokenizer."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids the tokenizer can emit (the model's embedding may have more rows)."""

  # Set by every implementation's constructor.
  _eos_id: int
  _fingerprint: str

  @property
  def eos_id(self) -> int:
    """Id of `<|endoftext|>`, the document separator (paper §2.3)."""
    return self._eos_id

  @property
  def fingerprint(self) -> str:
    """Hash of the tokenizer file; pre-tokenized shards record it so mismatches are caught."""
    return self._fingerprint

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes many texts at once (multi-threaded in the native library)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode`; `decode(encode(t)) == t` for every string t."""

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]

  def decode_batch(self, batch_ids: Sequence[Sequence[int]]) -> list[str]:
    return [self.decode(ids) for ids in batch_ids]


def _file_fingerprint(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _as_int_list(ids: Sequence[int]) -> list[int]:
  # numpy arrays and jax arrays arrive from the model; the native libraries want Python ints.
  return [int(i) for i in ids]


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (`*.model`) trained by `train_sentencepiece` or elsewhere."""

  def __init__(self, path: str, *, num_threads: int | None = None):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel

    self.path = str(path)
    self._sp = spm.SentencePieceProcessor(model_file=self.path)
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    eos = self._sp.piece_to_id(EOS_TOKEN)
    if self._sp.id_to_piece(eos) != EOS_TOKEN:
      raise ValueError(
          f"SentencePiece model {self.path} has no {EOS_TOKEN!r} piece; train it with "
          "phi1.tokenizer.train_sentencepiece (which sets eos_piece) or pass a tokenizer.json.")
    self._eos_id = eos
    # Byte-fallback ids of U+2581's UTF-8 bytes, used to keep literal U+2581 lossless.
    self._space_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE.encode("utf-8")]
    self._fingerprint = _file_fingerprint(self.path)

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  def _encode_with_literal_space_marks(self, text: str) -> list[int]:
    parts = self._sp.encode(text.split(_SP_SPACE), num_threads=1)
    ids = list(parts[0])
    for part in parts[1:]:
      ids += self._space_bytes
      ids += part
    return ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    texts = list(texts)
    out = self._sp.encode(texts, num_threads=self._num_threads)
    for i, text in enumerate(texts):
      if _SP_SPACE in text:  # rare: only then pay for the slow path
        out[i] = self._encode_with_literal_space_marks(text)
    return out

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(_as_int_list(ids))

  def decode_batch(self, batch_ids: Sequence[Sequence[int]]) -> list[str]:
    return self._sp.decode([_as_int_list(ids) for ids in batch_ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))


class HFTokenizer(Tokenizer):
  """An HF `tokenizer.json` (phi-1: the CodeGen byte-level BPE) via the `tokenizers` package."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _HFTok  # pylint: disable=import-outside-toplevel

    self.path = str(path)
    self._tok = _HFTok.from_file(self.path)
    # A literal "<|endoftext|>" inside a document is text, not a boundary (see module docstring).
    self._tok.encode_special_tokens = True
    eos = self._tok.token_to_id(EOS_TOKEN)
    if eos is None:
      raise ValueError(f"{self.path} has no {EOS_TOKEN!r} token; phi1 separates documents with it.")
    self._eos_id = eos
    self._fingerprint = _file_fingerprint(self.path)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(_as_int_list(ids), skip_special_tokens=False)

  def decode_batch(self, batch_ids: Sequence[Sequence[int]]) -> list[str]:
    return self._tok.decode_batch([_as_int_list(ids) for ids in batch_ids],
                                  skip_special_tokens=False)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads `*.model` (SentencePiece), `tokenizer.json`, or a directory holding either (HF first)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    hf = os.path.join(path, "tokenizer.json")
    if os.path.isfile(hf):
      return HFTokenizer(hf)
    models = sorted(f for f in os.listdir(path) if f.endswith(".model"))
    if len(models) == 1:
      return SentencePieceTokenizer(os.path.join(path, models[0]))
    raise FileNotFoundError(
        f"tokenizer directory {path} holds neither tokenizer.json nor exactly one *.model file "
        f"(found {models}); point the tokenizer path at the file itself.")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"tokenizer {path} does not exist: train one with phi1.tokenizer.train_sentencepiece, "
        "build the demo corpus (phi1.demo_corpus.build), or point at an HF tokenizer.json.")
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  if path.endswith(".json"):
    return HFTokenizer(path)
  raise ValueError(f"cannot tell the tokenizer type of {path}: expected *.model (SentencePiece) "
                   "or tokenizer.json (HF tokenizers)")


def _training_chunks(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Cuts documents at line ends (newlines kept) so whole lines, indentation included, are seen."""
  for text in texts:
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
      if chunk and size + len(line) > max_chars:
        yield "".join(chunk)
        chunk, size = [], 0
      chunk.append(line)
      size += len(line)
    if chunk:
      yield "".join(chunk)


def train_sentencepiece(
    texts: Iterable[str],
    model_path: str | os.PathLike,
    *,
    vocab_size: int = 4096,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
    input_sentence_size: int = 0,
) -> SentencePieceTokenizer:
  """Trains a lossless code BPE on `texts` and writes it to `model_path` (a `*.model` file).

  Settings and their reasons (SentencePiece defaults are tuned for natural language):
  - identity normalisation, no extra-whitespace removal, no dummy prefix: the text is kept as is.
  - split_by_whitespace=False and allow_whitespace_only_pieces: pieces may span spaces and newlines,
    so indentation runs ("        ") and "):\\n" become single tokens.
  - byte_fallback: any character outside the vocabulary becomes its UTF-8 bytes, never <unk>.
  - split_digits: numbers tokenise digit by digit, as in most code LMs.
  - `<|endoftext|>` is the eos piece (id 1; id 0 is <unk>, which byte fallback never emits).
  - input_sentence_size=0 trains on every chunk; set it to subsample a large corpus.
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  model_path = os.fspath(model_path)
  if not model_path.endswith(".model"):
    raise ValueError(f"model_path must end in .model, got {model_path}")
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_training_chunks(texts, _SP_TRAIN_CHUNK_CHARS),
      model_writer=proto,
      model_type="bpe",
      vocab_size=vocab_size,
      character_coverage=0.9995,
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_by_whitespace=False,
      allow_whitespace_only_pieces=True,
      split_digits=True,
      max_sentence_length=4 * _SP_TRAIN_CHUNK_CHARS,  # bytes; 4 covers any UTF-8 text
      seed_sentencepiece_size=seed_sentencepiece_size,
      input_sentence_size=input_sentence_size,
      shuffle_input_sentence=True,
      unk_id=0,
      eos_id=1,
      eos_piece=EOS_TOKEN,
      bos_id=-1,
      pad_id=-1,
      num_threads=num_threads or min(8, os.cpu_count() or 1),
      minloglevel=2,
  )
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  atomic.write_bytes(model_path, proto.getvalue())  # never half a model for a concurrent reader
  return SentencePieceTokenizer(model_path, num_threads=num_threads)
