"""The CPU demo corpus: the installed standard library as JSON lines plus a tokenizer, cached."""

import json
import os
import time

import pytest

from phi1 import data, demo_corpus
from phi1 import tokenizer as tk


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cache = tmp_path_factory.mktemp("demo")
  start = time.perf_counter()
  corpus = demo_corpus.build(cache, log=lambda _: None)
  return cache, corpus, time.perf_counter() - start


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_builds_train_eval_and_tokenizer(built):
  _, corpus, seconds = built
  assert seconds < 60
  train, held_out = _read(corpus.train_path), _read(corpus.eval_path)
  assert len(train) > 300 and 0 < len(held_out) < len(train) / 10
  for record in train + held_out:
    assert set(record) == {"id", "text", "source"} and record["text"].strip()
    assert record["id"].startswith("stdlib/") and record["source"].startswith("python-stdlib-")
  ids = [r["id"] for r in train + held_out]
  assert len(set(ids)) == len(ids), "train and eval must not share files"
  assert not any("/test/" in i or "site-packages" in i for i in ids)
  assert "stdlib/json/decoder.py" in ids
  assert corpus.manifest["train_documents"] == len(train)

  tok = tk.load_tokenizer(corpus.tokenizer_path)
  assert tok.vocab_size == 4096
  texts = [r["text"] for r in held_out]
  assert tok.decode_batch(tok.encode_batch(texts)) == texts


def test_second_build_reuses_the_cache(built):
  cache, corpus, _ = built
  mtime = os.stat(corpus.train_path).st_mtime_ns
  start = time.perf_counter()
  again = demo_corpus.build(cache, log=lambda _: None)
  assert time.perf_counter() - start < 1.0
  assert again == corpus and os.stat(again.train_path).st_mtime_ns == mtime
  assert len(os.listdir(cache)) == 1  # no leftover temporary directory


def test_build_is_deterministic_and_keyed_by_settings(tmp_path, built):
  _, corpus, _ = built
  small = dict(vocab_size=512, tokenizer_sample_chars=300_000, log=lambda _: None)
  a = demo_corpus.build(tmp_path / "a", **small)
  b = demo_corpus.build(tmp_path / "b", **small)
  assert os.path.basename(a.directory) == os.path.basename(b.directory)
  assert os.path.basename(a.directory) != os.path.basename(corpus.directory)
  for name in ("train.jsonl", "eval.jsonl", "tokenizer.model"):
    with open(os.path.join(a.directory, name), "rb") as fa, \
        open(os.path.join(b.directory, name), "rb") as fb:
      assert fa.read() == fb.read(), name
  with open(corpus.train_path, "rb") as f:  # same files and split whatever the tokenizer
    assert f.read() == open(a.train_path, "rb").read()


def test_pipeline_throughput_on_demo_corpus(built):
  """The loader must not bottleneck CPU training: batches/s at B=8, T=512 (printed with -s)."""
  _, corpus, _ = built
  cfg = data.default_config()
  cfg.sources = [corpus.train_path]
  cfg.eval_sources = [corpus.eval_path]
  cfg.tokenizer = corpus.tokenizer_path
  cfg.packing = "document"
  start = time.perf_counter()
  pipeline = data.build(cfg, seq_len=512, batch_size=8, process_index=0, process_count=1)
  build_seconds = time.perf_counter() - start
  it = iter(pipeline.train)
  next(it)
  start, n = time.perf_counter(), 200
  for _ in range(n):
    batch = next(it)
  rate = n / (time.perf_counter() - start)
  it.close()
  assert batch["inputs"].shape == (8, 512)
  assert pipeline.stats.sources["source0"].tokens > 1_000_000
  print(f"\nbuild (tokenize {pipeline.stats.sources['source0'].tokens:,} tokens) {build_seconds:.1f}s; "
        f"{rate:.0f} batches/s = {rate * 8 * 512 / 1e6:.2f}M tokens/s at B=8, T=512")
  # A tiny model on 2 CPU cores trains at well under 0.1M tokens/s.
  assert rate * 8 * 512 > 200_000
