"""Tokenized documents with random access: in memory, or ArrayRecord shards from `phi1 pretokenize`.

Every document is tokenized exactly once: text sources are batch-encoded when the pipeline is built
(only the documents this process reads), pre-tokenized shards not at all. A document is
`(tokens, prompt_len)`; the first `prompt_len` tokens are the prompt of an exercise (0 otherwise),
and the eos separator is not stored (the pipeline appends it).

On-disk format, one ArrayRecord entry per document: a 12-byte header (magic `P1TK`, format version,
dtype code, 2 reserved bytes, little-endian uint32 prompt_len) then the token ids (uint16 when the
vocabulary fits, else int32). `metadata.json` next to the shards names the tokenizer (fingerprint,
eos id, vocab size) and each shard's record count, so a truncated shard is caught.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from phi1.data.records import DataStats

FORMAT = "phi1-pretokenized"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
_MAGIC = b"P1TK"
_HEADER = struct.Struct("<4sBBxxI")
_DTYPES = {0: np.dtype("<u2"), 1: np.dtype("<i4")}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}


class CorruptRecord(ValueError):
  pass


def token_dtype(vocab_size: int) -> np.dtype:
  return _DTYPES[0] if vocab_size <= 2**16 else _DTYPES[1]


def encode_record(tokens: np.ndarray, prompt_len: int, dtype: np.dtype) -> bytes:
  return _HEADER.pack(_MAGIC, FORMAT_VERSION, _DTYPE_CODES[np.dtype(dtype)], prompt_len) + \
      np.asarray(tokens, dtype=dtype).tobytes()


def decode_record(data: bytes, vocab_size: int) -> tuple[np.ndarray, int]:
  if len(data) < _HEADER.size:
    raise CorruptRecord(f"record of {len(data)} bytes is shorter than its header")
  magic, version, code, prompt_len = _HEADER.unpack_from(data)
  if magic != _MAGIC or version != FORMAT_VERSION or code not in _DTYPES:
    raise CorruptRecord(f"bad header {magic!r} v{version} dtype {code}")
  dtype = _DTYPES[code]
  payload = len(data) - _HEADER.size
  if payload % dtype.itemsize:
    raise CorruptRecord(f"payload of {payload} bytes is not a whole number of {dtype} tokens")
  tokens = np.frombuffer(data, dtype=dtype, offset=_HEADER.size)
  if prompt_len > len(tokens) or len(tokens) == 0:
    raise CorruptRecord(f"prompt_len {prompt_len} with {len(tokens)} tokens")
  if tokens.max() >= vocab_size or (dtype.kind == "i" and tokens.min() < 0):
    raise CorruptRecord(f"token id outside [0, {vocab_size})")
  return tokens, int(prompt_len)


def encode_documents(docs: Iterable[tuple[str, str]], tokenizer, *, chunk: int = 512
                     ) -> Iterator[tuple[list[int], int]]:
  """(prompt, text) documents -> (prompt ids + text ids, prompt_len), batch-encoded in chunks.

  Prompt and completion are encoded separately so the boundary is exact (a BPE merge across it
  would blur which tokens are prompt).
  """
  docs = iter(docs)
  while part := list(itertools.islice(docs, chunk)):
    has_prompt = any(prompt for prompt, _ in part)
    prompts = tokenizer.encode_batch([p for p, _ in part]) if has_prompt else [[]] * len(part)
    texts = tokenizer.encode_batch([t for _, t in part])
    for p, t in zip(prompts, texts):
      yield list(p) + list(t), len(p)


class InMemoryDocs:
  """Tokenized documents packed in one flat array (random access, cheap to slice)."""

  def __init__(self, tokens: np.ndarray, offsets: np.ndarray, prompt_lens: np.ndarray):
    self.tokens, self.offsets, self.prompt_lens = tokens, offsets, prompt_lens

  @classmethod
  def tokenize(cls, docs: Sequence[tuple[str, str]], tokenizer) -> InMemoryDocs:
    dtype = token_dtype(tokenizer.vocab_size)
    pieces, prompt_lens = [], []
    for ids, prompt_len in encode_documents(docs, tokenizer):
      pieces.append(np.asarray(ids, dtype=dtype))
      prompt_lens.append(prompt_len)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    return cls(flat, offsets, np.asarray(prompt_lens, dtype=np.int32))

  def __len__(self) -> int:
    return len(self.prompt_lens)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.tokens[self.offsets[index]:self.offsets[index + 1]], int(self.prompt_lens[index])

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)


def read_metadata(path: str) -> dict:
  """Metadata of a pre-tokenized directory (or of the directory of a metadata.json path)."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  meta_path = os.path.join(directory, METADATA_FILE)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{meta_path} is missing or unreadable ({e}); rerun `phi1 pretokenize` "
                     f"for {directory}") from e
  if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
    raise ValueError(f"{meta_path} is not {FORMAT} v{FORMAT_VERSION}; rerun `phi1 pretokenize`")
  meta["directory"] = directory
  return meta


def is_pretokenized(path: str) -> bool:
  return (os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_FILE))) or \
      os.path.basename(path) == METADATA_FILE


class ArrayRecordDocs:
  """Pre-tokenized shards as a random-access source; corrupt entries read as None and are counted.

  Shards whose record count differs from metadata.json (truncated, overwritten) are left out whole.
  """

  def __init__(self, path: str, stats: DataStats, name: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    import grain  # pylint: disable=import-outside-toplevel

    self.meta = read_metadata(path)
    self.vocab_size = int(self.meta["vocab_size"])
    self._stats, self._name = stats, name
    source_stats = stats.source(name, self.meta["directory"])
    good, self.num_tokens = [], 0  # tokens in the readable shards
    for shard in self.meta["shards"]:
      file = os.path.join(self.meta["directory"], shard["file"])
      try:
        reader = array_record_module.ArrayRecordReader(file)
        count = reader.num_records()
        reader.close()
      except (OSError, RuntimeError, ValueError):
        count = -1
      if count != shard["records"]:
        source_stats.corrupt_shards += 1
        source_stats.records += shard["records"]
        source_stats.corrupt_records += shard["records"]
      else:
        good.append(file)
        source_stats.records += count
        source_stats.documents += count
        source_stats.tokens += shard["tokens"]
        self.num_tokens += shard["tokens"]
    self._records = grain.sources.ArrayRecordDataSource(good) if good else []
    self._seen_bad: set[int] = set()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int] | None:
    try:
      return decode_record(self._records[index], self.vocab_size)
    except (RuntimeError, CorruptRecord):
      with self._lock:  # reader threads; count a bad entry once however many epochs read it
        first_time = index not in self._seen_bad
        self._seen_bad.add(index)
      if first_time:
        self._stats.add(self._name, "corrupt_records")
        self._stats.add(self._name, "documents", -1)
      return None


class Subset:
  """`source[indices[i]]` as a random-access source (train/eval split, per-process shard)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]
