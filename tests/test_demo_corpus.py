"""The CPU demo corpus: the installed standard library as JSON lines plus a tokenizer, cached."""

import dataclasses
import json
import os
import time

import numpy as np
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


def test_exercises_are_signature_and_docstring_then_body(built):
  _, corpus, _ = built
  train_files = {r["id"] for r in _read(corpus.train_path)}
  eval_files = {r["id"] for r in _read(corpus.eval_path)}
  for path, files in ((corpus.exercises_train_path, train_files),
                      (corpus.exercises_eval_path, eval_files)):
    exercises = _read(path)
    assert exercises and len({e["id"] for e in exercises}) == len(exercises)
    for e in exercises:
      assert e["id"].split("::")[0] in files  # held-out files give the held-out exercises
      assert e["text"] == e["prompt"] + e["completion"]
      assert e["prompt"].startswith(("def ", "async def "))
      assert e["prompt"].rstrip().endswith(('"', "'")) and e["completion"].strip()
  assert corpus.manifest["train_exercises"] > 500


EXERCISE_SOURCE = '''import os

def add(a, b):
    """Adds.

    Twice over.
    """
    return a + b

@cache
def decorated(x):
    """Doc."""
    return x

def undocumented(x):
    return x

def only_doc():
    """Nothing else."""

def same_line():
    """Doc."""; return 1

class C:
    def method(self):
        """Doc."""
        return 1

async def fetch(u):
    "Get u."
    return await get(u)
'''


def test_exercises_from_source_cuts_only_clean_documented_functions():
  got = demo_corpus.exercises_from_source(EXERCISE_SOURCE)
  assert [name for name, _, _ in got] == ["add", "fetch"]
  _, prompt, completion = got[0]
  assert prompt == 'def add(a, b):\n    """Adds.\n\n    Twice over.\n    """\n'
  assert completion == "    return a + b\n"
  assert got[1][1:] == ('async def fetch(u):\n    "Get u."\n', "    return await get(u)\n")
  assert demo_corpus.exercises_from_source("def broken(:\n") == []


def test_second_build_reuses_the_cache(built):
  cache, corpus, _ = built
  mtime = os.stat(corpus.train_path).st_mtime_ns
  start = time.process_time()  # CPU time: a loaded machine does not stretch it
  again = demo_corpus.build(cache, log=lambda _: None)
  assert time.process_time() - start < 1.0
  assert again == corpus and os.stat(again.train_path).st_mtime_ns == mtime
  assert len(os.listdir(cache)) == 1  # no leftover temporary directory


def test_build_is_deterministic_and_keyed_by_settings(tmp_path, built):
  cache, corpus, _ = built
  again = demo_corpus.build(tmp_path, log=lambda _: None)  # from scratch, elsewhere
  assert os.path.basename(again.directory) == os.path.basename(corpus.directory)
  for name in ("train.jsonl", "eval.jsonl", "exercises_train.jsonl", "exercises_eval.jsonl",
               "tokenizer.model"):
    with open(os.path.join(again.directory, name), "rb") as fa, \
        open(os.path.join(corpus.directory, name), "rb") as fb:
      assert fa.read() == fb.read(), name
  assert demo_corpus.locate(cache) == dataclasses.replace(corpus, manifest={})
  others = {demo_corpus.locate(cache, vocab_size=512).directory,
            demo_corpus.locate(cache, eval_fraction=0.1).directory,
            demo_corpus.locate(cache, include_tests=True).directory,
            demo_corpus.locate(cache, tokenizer_sample_chars=10).directory}
  assert len(others) == 4 and corpus.directory not in others


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
  tokens = pipeline.stats.sources["source0"].tokens
  print(f"\nbuild (tokenize {tokens:,} tokens) {build_seconds:.1f}s; "
        f"{rate:.0f} batches/s = {rate * 8 * 512 / 1e6:.2f}M tokens/s at B=8, T=512")
  # A tiny model on 2 CPU cores trains at well under 0.1M tokens/s.
  assert rate * 8 * 512 > 200_000


def test_exercises_feed_the_finetuning_pipeline_with_prompt_masking(built):
  _, corpus, _ = built
  cfg = data.default_config()
  cfg.sources = [corpus.exercises_eval_path]
  cfg.eval_sources = [corpus.exercises_eval_path]
  cfg.tokenizer = corpus.tokenizer_path
  cfg.loss_on_prompt = False
  pipeline = data.build(cfg, seq_len=128, batch_size=2, process_index=0, process_count=1)
  batches = list(pipeline.eval_batches())
  mask = np.concatenate([b["loss_mask"] for b in batches])
  targets = np.concatenate([b["targets"] for b in batches])
  tok = pipeline.tokenizer
  exercises = _read(corpus.exercises_eval_path)
  # Trained-on targets are exactly the completions and their eos, in order.
  kept = tok.decode([t for t, m in zip(targets.reshape(-1), mask.reshape(-1))
                     if m and t != tok.eos_id])
  assert kept == "".join(e["completion"] for e in exercises)
  assert int((targets.reshape(-1)[mask.reshape(-1) > 0] == tok.eos_id).sum()) == len(exercises)


def test_experiment_configs_name_the_corpus_without_building_it(tmp_path, monkeypatch):
  """get_config is pure: the CPU configs only name the corpus's files (also on --dry-run)."""
  from phi1 import config as config_lib
  monkeypatch.setenv("PHI1_CACHE", str(tmp_path))
  built = []
  monkeypatch.setattr(demo_corpus, "build", lambda *a, **k: built.append(a))
  for spec in ("experiments/cpu_demo.py", "experiments/cpu_sweep.py",
               "experiments/phi1_small_pretrain.py:cpu"):
    config = config_lib.load(spec)
    assert config.data.tokenizer.startswith(str(tmp_path))
  assert built == [] and not any(tmp_path.iterdir())
  # A launcher builds the corpus when the run reads its files; paths elsewhere build nothing.
  demo_corpus.build_if_named({"sources": [{"path": str(tmp_path / "elsewhere.jsonl")}]})
  assert built == []
  demo_corpus.build_if_named(config.data)
  assert built == [(str(tmp_path),)]
