"""`phi1 pretokenize`: shards that read back as the same documents; corruption is counted."""

import json
import os

import numpy as np
import pytest

from phi1 import data
from phi1 import pretokenize
from phi1 import tokenizer as tk
from phi1.data import token_docs

EOS = 256


class ByteTokenizer(tk.Tokenizer):
  vocab_size = 257
  eos_id = EOS
  fingerprint = "bytes-v1"

  def __init__(self, fingerprint="bytes-v1"):
    self.fingerprint = fingerprint

  def encode_batch(self, texts):
    return [list(t.encode("utf-8")) for t in texts]

  def decode(self, ids):
    return bytes(int(i) for i in ids if i < 256).decode("utf-8")


@pytest.fixture
def corpus(tmp_path):
  records = [{"text": f"document {i} " + "y" * (i % 17)} for i in range(30)]
  records += [{"prompt": f"q{i}?", "completion": f" a{i}."} for i in range(10)]
  path = tmp_path / "corpus.jsonl"
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.write("{broken\n")
  return records, str(path)


def _config(sources, tokenizer=""):
  c = data.default_config()
  c.sources, c.eval_sources, c.tokenizer = sources, sources, tokenizer
  c.loss_on_prompt = False
  c.prefetch_batches = 0
  return c


def _eval_documents(pipeline):
  """(text, loss mask) of every held-out document, as a sorted list."""
  batches = list(pipeline.eval_batches())
  targets = np.concatenate([b["targets"] for b in batches]).reshape(-1)
  mask = np.concatenate([b["loss_mask"] for b in batches]).reshape(-1)
  docs, start = [], 0
  for end in np.flatnonzero(targets == EOS):
    docs.append((bytes(targets[start:end].tolist()).decode(), tuple(mask[start:end + 1])))
    start = end + 1
  return sorted(docs)


def test_shards_hold_the_same_documents_as_the_text_source(tmp_path, corpus):
  records, path = corpus
  out = tmp_path / "tok"
  meta = pretokenize.pretokenize([path], str(out), ByteTokenizer(), num_shards=3,
                                 log=lambda _: None)
  assert sorted(os.listdir(out)) == ["metadata.json"] + [
      f"tokens-{i:05d}-of-00003.array_record" for i in range(3)]
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
  assert token_docs.read_metadata(str(out))["shards"] == meta["shards"]
  assert meta["documents"] == len(records)
  assert [s["records"] for s in meta["shards"]] == [14, 13, 13]
  assert meta["inputs"]["input0"]["bad_json"] == 1
  texts = [r.get("prompt", "") + r.get("completion", r.get("text", "")) for r in records]
  assert meta["tokens"] == sum(len(t.encode()) for t in texts)
  from_text = data.build(_config([path]), seq_len=16, batch_size=2, tokenizer=ByteTokenizer(),
                         process_index=0, process_count=1)
  # No tokenizer needed: eos and vocab come from metadata.json.
  from_shards = data.build(_config([str(out)]), seq_len=16, batch_size=2, process_index=0,
                           process_count=1)
  assert from_shards.eos_id == EOS and from_shards.vocab_size == 257
  assert _eval_documents(from_text) == _eval_documents(from_shards)
  assert from_shards.stats.sources["source0"].documents == len(records)
  batch = next(iter(from_shards.train))
  assert batch["inputs"].shape == (2, 16)


def test_pretokenize_command(tmp_path, corpus, capsys):
  _, path = corpus
  sp_path = tmp_path / "sp.model"
  tk.train_sentencepiece(["def f(x):\n    return x\n" * 20, "class A:\n    pass\n" * 20],
                         sp_path, vocab_size=300)
  out = tmp_path / "tok"
  assert pretokenize.main([path, "--tokenizer", str(sp_path), "--output", str(out),
                           "--num-shards", "2"]) == 0
  assert "40 documents" in capsys.readouterr().out
  meta = token_docs.read_metadata(str(out))
  assert meta["tokenizer_fingerprint"] == tk.load_tokenizer(sp_path).fingerprint
  assert meta["dtype"] == "uint16"
  # Reading with the right tokenizer works; with another one it is refused.
  data.build(_config([str(out)], str(sp_path)), seq_len=8, batch_size=1, process_index=0,
             process_count=1)
  with pytest.raises(ValueError, match="re-run `phi1 pretokenize`"):
    data.build(_config([str(out)]), seq_len=8, batch_size=1, tokenizer=ByteTokenizer("other"),
               process_index=0, process_count=1)
  # Errors: existing output, missing input, non-text input.
  assert pretokenize.main([path, "--tokenizer", str(sp_path), "--output", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert pretokenize.main([str(tmp_path / "none.jsonl"), "--tokenizer", str(sp_path),
                           "--output", str(tmp_path / "x")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert pretokenize.main([str(out), "--tokenizer", str(sp_path), "--output",
                           str(tmp_path / "y")]) == 2
  assert "not a text source" in capsys.readouterr().err
  assert pretokenize.main([path, "--tokenizer", str(sp_path), "--output", str(out),
                           "--overwrite"]) == 0


def test_corrupt_shards_and_records_are_counted(tmp_path, corpus):
  records, path = corpus
  out = tmp_path / "tok"
  meta = pretokenize.pretokenize([path], str(out), ByteTokenizer(), num_shards=4,
                                 log=lambda _: None)
  shards = [out / s["file"] for s in meta["shards"]]
  # Shard 0: truncated. Shard 1: bytes flipped inside its records.
  shards[0].write_bytes(shards[0].read_bytes()[:100])
  raw = bytearray(shards[1].read_bytes())
  for k in range(300, 900):
    raw[k] ^= 0x5A
  shards[1].write_bytes(bytes(raw))
  pipeline = data.build(_config([str(out)]), seq_len=16, batch_size=2, process_index=0,
                        process_count=1)
  docs = _eval_documents(pipeline)  # reads every record of the eval source once
  s = pipeline.stats.sources["eval0"]
  assert s.corrupt_shards == 1 and pipeline.stats.sources["source0"].corrupt_shards == 1
  assert s.records == len(records) + 1 and s.bad_json == 1  # the broken line, seen at tokenizing
  assert s.corrupt_records > meta["shards"][0]["records"]  # the truncated shard + flipped records
  assert s.documents + s.corrupt_records == len(records) == len(docs) + s.corrupt_records
  next(iter(pipeline.train))


@pytest.mark.parametrize("mangle, message", [
    (lambda r: r[:5], "shorter than its header"),
    (lambda r: b"XXXX" + r[4:], "bad header"),
    (lambda r: r + b"\x01", "whole number"),
    (lambda r: r[:12] + np.array([300], "<u2").tobytes(), "outside"),
])
def test_record_format_checks(mangle, message):
  record = token_docs.encode_record(np.array([1, 2, 3]), 1, np.dtype("<u2"))
  np.testing.assert_array_equal(token_docs.decode_record(record, 257)[0], [1, 2, 3])
  assert token_docs.decode_record(record, 257)[1] == 1
  with pytest.raises(token_docs.CorruptRecord, match=message):
    token_docs.decode_record(mangle(record), 257)
