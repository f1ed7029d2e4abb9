"""The grain data pipeline: packing, masks, mixtures, determinism, exact resume, bad records."""

import gzip
import json

import numpy as np
import pytest

from phi1 import data
from phi1 import tokenizer as tk

EOS = 256


class ByteTokenizer(tk.Tokenizer):
  """UTF-8 bytes as tokens: the expected token stream is known exactly."""

  vocab_size = 257
  eos_id = EOS
  fingerprint = "bytes-v1"

  def encode_batch(self, texts):
    return [list(t.encode("utf-8")) for t in texts]

  def decode(self, ids):
    return bytes(int(i) for i in ids if i < 256).decode("utf-8")


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def _docs(n, tag="d", seed=0):
  rng = np.random.default_rng(seed)
  # Lengths from 1 to ~3 rows of T=32, so documents both share rows and span several.
  return [f"<{tag}{i:03d}>" + "x" * int(rng.integers(0, 90)) for i in range(n)]


def _config(sources, **overrides):
  c = data.default_config()
  c.sources = sources
  c.row_shuffle_window = 1
  c.prefetch_batches = 0
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _build(config, seq_len=32, batch_size=4, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return data.build(config, seq_len=seq_len, batch_size=batch_size, tokenizer=ByteTokenizer(), **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _rows(batches, key):
  return np.concatenate([b[key] for b in batches])


def _split_docs(token_stream):
  """Splits an eos-joined token stream into document texts (the last one may be partial)."""
  docs, cur = [], []
  for t in token_stream:
    if t == EOS:
      docs.append(bytes(cur).decode())
      cur = []
    else:
      cur.append(int(t))
  return docs


def _epoch_docs(it):
  """Documents of the first epoch, read from the targets stream until one repeats."""
  stream = []
  while True:
    stream.extend(next(it)["targets"].reshape(-1).tolist())
    docs = _split_docs(stream)
    if len(docs) > len(set(docs)):
      break
  seen = []
  for d in docs:
    if d in seen:
      return seen
    seen.append(d)


@pytest.fixture
def corpus(tmp_path):
  texts = _docs(40)
  records = [{"id": i, "text": t} for i, t in enumerate(texts)]
  return texts, _write_jsonl(tmp_path / "a.jsonl", records)


def test_concat_stream_holds_every_token_once_in_order(corpus):
  texts, path = corpus
  it = iter(_build(_config([path])).train)
  stream_len = sum(len(t) + 1 for t in texts)
  batches = _take(it, -(-stream_len // (32 * 4)) + 1)
  inputs, targets = _rows(batches, "inputs"), _rows(batches, "targets")
  assert inputs.shape[1] == 32 and inputs.dtype == np.int32 and targets.dtype == np.int32
  # One token stream, inputs one step behind targets, also across row boundaries.
  flat_in, flat_tgt = inputs.reshape(-1), targets.reshape(-1)
  assert flat_in[0] == EOS
  np.testing.assert_array_equal(flat_in[1:], flat_tgt[:-1])
  # The first epoch is a permutation of the documents, each whole and exactly once.
  epoch = _split_docs(flat_tgt[:stream_len])
  assert sorted(epoch) == sorted(texts)
  assert epoch != texts, "documents should be shuffled"
  assert np.all(_rows(batches, "loss_mask") == 1.0)
  assert set(batches[0]) == {"inputs", "targets", "loss_mask"}


def test_document_mode_same_rows_with_segments_that_never_cross_documents(corpus):
  texts, path = corpus
  concat = _take(iter(_build(_config([path])).train), 12)
  doc = _take(iter(_build(_config([path], packing="document")).train), 12)
  for key in ("inputs", "targets", "loss_mask"):
    np.testing.assert_array_equal(_rows(concat, key), _rows(doc, key))
  inputs, targets = _rows(doc, "inputs"), _rows(doc, "targets")
  seg, pos = _rows(doc, "segment_ids"), _rows(doc, "positions")
  assert seg.dtype == np.int32 and pos.dtype == np.int32
  # Document index of every target in the global stream: it increases after each eos target.
  ends = np.cumsum(targets.reshape(-1) == EOS)
  doc_of_target = np.concatenate([[0], ends[:-1]]).reshape(seg.shape)
  for r in range(seg.shape[0]):
    assert seg[r, 0] == 1 and np.all(seg[r] >= 1)  # no padding in a training row
    assert np.all(np.diff(seg[r]) >= 0) and np.all(np.diff(seg[r]) <= 1)
    starts = np.flatnonzero(np.diff(seg[r], prepend=0))
    # A new segment starts exactly where a document starts (input eos) or at the row start.
    expected_starts = np.flatnonzero((inputs[r] == EOS) | (np.arange(32) == 0))
    np.testing.assert_array_equal(starts, expected_starts)
    for s in np.unique(seg[r]):
      idx = np.flatnonzero(seg[r] == s)
      np.testing.assert_array_equal(pos[r, idx], np.arange(len(idx)))
    # Attention allowed by (causal & same segment) never links two documents.
    allowed = (seg[r][:, None] == seg[r][None, :]) & np.tri(32, dtype=bool)
    q, k = np.nonzero(allowed)
    assert np.all(doc_of_target[r, q] == doc_of_target[r, k])


def test_prompt_loss_mask(tmp_path):
  records = [{"prompt": f"def f{i}(x):\n", "completion": f"  return {i}\n"} for i in range(9)]
  records.append({"text": "# plain text document\n"})
  path = _write_jsonl(tmp_path / "ex.jsonl", records)
  for loss_on_prompt in (False, True):
    cfg = _config([path], eval_sources=[path], loss_on_prompt=loss_on_prompt)
    batches = list(_build(cfg).eval_batches())
    targets = _rows(batches, "targets").reshape(-1)
    mask = _rows(batches, "loss_mask").reshape(-1)
    expected_mask = []
    for r in records:
      prompt, completion = (r["prompt"], r["completion"]) if "prompt" in r else ("", r["text"])
      expected_mask += [float(loss_on_prompt)] * len(prompt.encode())
      expected_mask += [1.0] * (len(completion.encode()) + 1)  # completion and its eos
    n = len(expected_mask)
    np.testing.assert_array_equal(mask[:n], expected_mask)
    assert not mask[n:].any(), "padding carries no loss"
    assert _split_docs(targets[:n]) == [r.get("prompt", "") + r.get("completion", r.get("text", ""))
                                        for r in records]


def test_mixture_weights_are_shares_of_rows(tmp_path):
  a = _write_jsonl(tmp_path / "a.jsonl", [{"text": "a" * 50}] * 20)
  b = _write_jsonl(tmp_path / "b.jsonl", [{"text": "b" * 50}] * 20)
  cfg = _config([{"path": a, "weight": 3.0}, {"path": b, "weight": 1.0, "name": "bbb"}],
                mixture="weights")
  targets = _rows(_take(iter(_build(cfg).train), 100), "targets")
  from_a = np.mean([np.any(row == ord("a")) for row in targets])
  assert abs(from_a - 0.75) < 0.05
  assert not np.any([np.any(row == ord("a")) and np.any(row == ord("b")) for row in targets])


def _fraction_from_a(pipeline, n_batches=100):
  targets = _rows(_take(iter(pipeline.train), n_batches), "targets")
  return np.mean([np.any(row == ord("a")) for row in targets])


@pytest.mark.parametrize("pretokenized", [False, True])
def test_size_weighted_mixture_sees_every_token_equally_often(tmp_path, pretokenized):
  # 3x as many tokens in a as in b: concatenation (the default) draws 3/4 of the rows from a.
  a = _write_jsonl(tmp_path / "a.jsonl", [{"text": "a" * 50}] * 60)
  b = _write_jsonl(tmp_path / "b.jsonl", [{"text": "b" * 50}] * 20)
  cache = {"cache_dir": str(tmp_path / "cache")} if pretokenized else {}
  cfg = _config([{"path": a}, {"path": b}], **cache)
  assert cfg.mixture == "tokens"
  pipeline = _build(cfg)
  assert pipeline.mixture_shares == pytest.approx({"source0": 0.75, "source1": 0.25})
  assert abs(_fraction_from_a(pipeline) - 0.75) < 0.05
  # A weight multiplies a source's tokens: b upsampled 3x meets a at half the rows.
  cfg.sources = [{"path": a}, {"path": b, "weight": 3.0}]
  assert abs(_fraction_from_a(_build(cfg)) - 0.5) < 0.06


def test_mixture_shares_and_bad_mixture():
  from phi1.data import mixture
  tokens = {"code": 6_000, "textbooks": 1_000}
  assert mixture.shares("tokens", {"code": 1.0, "textbooks": 1.0}, tokens) == pytest.approx(
      {"code": 6 / 7, "textbooks": 1 / 7})
  assert mixture.shares("weights", {"code": 1.0, "textbooks": 1.0}, tokens) == pytest.approx(
      {"code": 0.5, "textbooks": 0.5})
  with pytest.raises(ValueError, match="hold no tokens"):
    mixture.shares("tokens", {"code": 1.0}, {"code": 0})
  with pytest.raises(ValueError, match="data.mixture must be one of"):
    _build(_config(["unused.jsonl"], mixture="concat"))


def test_same_seed_same_batches_other_seed_other_batches(corpus):
  _, path = corpus
  cfg = _config([path], row_shuffle_window=8, shuffle_seed=3, prefetch_batches=2)
  first = _rows(_take(iter(_build(cfg).train), 6), "targets")
  again = _rows(_take(iter(_build(cfg).train), 6), "targets")
  np.testing.assert_array_equal(first, again)
  cfg.shuffle_seed = 4
  other = _rows(_take(iter(_build(cfg).train), 6), "targets")
  assert not np.array_equal(first, other)


def _mixed_document_config(tmp_path):
  a = _write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in _docs(30, "a", seed=1)])
  b = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": t[:5], "completion": t[5:]}
                                          for t in _docs(25, "b", seed=2)])
  return _config([{"path": a, "weight": 2.0}, {"path": b, "weight": 1.0}], packing="document",
                 row_shuffle_window=5, prefetch_batches=3, loss_on_prompt=False, read_threads=2)


@pytest.mark.parametrize("k", [1, 7, 23])
def test_exact_resume_from_saved_state(tmp_path, k):
  cfg = _mixed_document_config(tmp_path)
  it = iter(_build(cfg).train)
  _take(it, k)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint keeps
  expected = _take(it, 8)
  fresh = iter(_build(cfg).train)
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 8)):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_resume_through_orbax_checkpoint_manager(tmp_path):
  import orbax.checkpoint as ocp

  cfg = _mixed_document_config(tmp_path)
  it = iter(_build(cfg).train)
  _take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(5, args=ocp.args.Composite(data=data.checkpoint_save_args(it)))
    manager.wait_until_finished()
  expected = _take(it, 4)
  fresh = iter(_build(cfg).train)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(manager.latest_step(),
                    args=ocp.args.Composite(data=data.checkpoint_restore_args(fresh)))
  for want, got in zip(expected, _take(fresh, 4)):
    np.testing.assert_array_equal(want["inputs"], got["inputs"])
    np.testing.assert_array_equal(want["segment_ids"], got["segment_ids"])


def test_bad_records_are_counted_not_fatal(tmp_path):
  good = [{"text": f"ok {i}"} for i in range(5)]
  lines = [json.dumps(r) for r in good] + [
      "{not json", json.dumps([1, 2]), json.dumps({"id": 3}), json.dumps({"text": 7}),
      json.dumps({"text": "   \n"}), json.dumps({"prompt": "", "completion": ""}), ""]
  plain = _write_jsonl(tmp_path / "a.jsonl", lines)
  with open(plain, "ab") as f:
    f.write(b'{"text": "bad \xff\xfe bytes"}\n')
  gz = tmp_path / "a.jsonl.gz"
  gz.write_bytes(gzip.compress(open(plain, "rb").read()))
  pydir = tmp_path / "py"
  (pydir / "pkg").mkdir(parents=True)
  (pydir / "pkg" / "ok.py").write_text("x = 1\n")
  (pydir / "pkg" / "__init__.py").write_text("")
  (pydir / "latin.py").write_bytes("# -*- coding: latin-1 -*-\ns = 'é'\n".encode("latin-1"))
  (pydir / "broken.py").write_bytes(b"s = '\xff\xfe'\n")
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": ["p1", None, "", "p2"]}), tmp_path / "t.parquet")

  pipeline = _build(_config([plain, str(gz), str(pydir), str(tmp_path / "t.parquet")]))
  s = pipeline.stats.sources
  for name in ("source0", "source1"):
    assert (s[name].records, s[name].documents, s[name].bad_json, s[name].missing_text,
            s[name].empty_text, s[name].undecodable) == (12, 5, 2, 2, 2, 1)
  assert (s["source2"].documents, s["source2"].empty_text, s["source2"].undecodable) == (2, 1, 1)
  assert (s["source3"].documents, s["source3"].missing_text, s["source3"].empty_text) == (2, 1, 1)
  assert pipeline.stats.problems == 2 * 7 + 2 + 2
  logged = pipeline.stats.as_dict()
  assert logged["data/source0/bad_json"] == 2 and all(isinstance(v, int) for v in logged.values())
  assert "skipped" in pipeline.stats.summary()
  next(iter(pipeline.train))  # still trains on what is good


def test_processes_read_disjoint_documents_that_cover_the_source(corpus):
  texts, path = corpus
  per_process = []
  for p in range(3):
    it = iter(_build(_config([path]), batch_size=6, process_index=p, process_count=3).train)
    assert next(it)["inputs"].shape == (2, 32)  # 6 rows over 3 processes
    it = iter(_build(_config([path]), batch_size=6, process_index=p, process_count=3).train)
    per_process.append(set(_epoch_docs(it)))
  assert sum(map(len, per_process)) == len(texts)
  assert set.union(*per_process) == set(texts)
  with pytest.raises(ValueError, match="not divisible"):
    _build(_config([path]), batch_size=5, process_index=0, process_count=3)


def test_eval_split_is_held_out_deterministic_and_finite(corpus):
  texts, path = corpus
  pipeline = _build(_config([path], eval_fraction=0.25))
  runs = [list(pipeline.eval_batches()) for _ in range(2)]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  held_out = _split_docs(_rows(runs[0], "targets").reshape(-1))
  assert 3 <= len(held_out) <= 20 and set(held_out) <= set(texts)
  assert runs[0][-1]["inputs"].shape == (4, 32)  # last batch padded, not short
  train_docs = _epoch_docs(iter(pipeline.train))
  assert set(train_docs) == set(texts) - set(held_out)
  fixed = list(pipeline.eval_batches(num_batches=len(runs[0]) + 2))
  assert len(fixed) == len(runs[0]) + 2 and not fixed[-1]["loss_mask"].any()
  assert len(list(pipeline.eval_batches(num_batches=1))) == 1
  with pytest.raises(ValueError, match="no eval data"):
    next(_build(_config([path])).eval_batches())


def test_missing_or_wrong_config_says_what_to_fix(tmp_path, corpus):
  _, path = corpus
  with pytest.raises(FileNotFoundError, match="nowhere.jsonl does not exist"):
    _build(_config([str(tmp_path / "nowhere.jsonl")]))
  with pytest.raises(ValueError, match="data.sources is empty"):
    _build(_config([]))
  with pytest.raises(ValueError, match="packing must be one of"):
    _build(_config([path], packing="best_fit"))
  with pytest.raises(ValueError, match="keys are path"):
    _build(_config([{"path": path, "wieght": 2}]))
  with pytest.raises(ValueError, match="data.tokenizer must name a tokenizer"):
    data.build(_config([path]), seq_len=8, batch_size=1, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="set model.vocab_size >= 257"):
    _build(_config([path]), model_vocab_size=256)
  assert _build(_config([path]), model_vocab_size=320).vocab_size == 257
  array = tmp_path / "array.json"
  array.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
  with pytest.raises(ValueError, match="JSON array"):
    _build(_config([str(array)]))
  empty = _write_jsonl(tmp_path / "empty.jsonl", ["{oops"])
  with pytest.raises(ValueError, match="no usable documents"):
    _build(_config([empty]))


class CountingTokenizer(ByteTokenizer):
  def __init__(self):
    self.texts_encoded = 0

  def encode_batch(self, texts):
    self.texts_encoded += len(texts)
    return super().encode_batch(texts)


def test_cache_dir_tokenizes_each_text_source_once(tmp_path, corpus):
  texts, path = corpus
  with open(path, "a") as f:
    f.write("{bad json\n")
  cfg = _config([path], eval_sources=[path], cache_dir=str(tmp_path / "cache"))

  def build():
    tok = CountingTokenizer()
    pipeline = data.build(cfg, seq_len=32, batch_size=4, tokenizer=tok, process_index=0,
                          process_count=1)
    return pipeline, tok.texts_encoded

  first, encoded = build()
  assert encoded == len(texts)  # the eval source is the same file: one tokenized copy serves both
  assert len(list((tmp_path / "cache").iterdir())) == 1
  second, encoded_again = build()
  assert encoded_again == 0
  for pipeline in (first, second):
    held_out = _split_docs(_rows(list(pipeline.eval_batches()), "targets").reshape(-1))
    assert sorted(held_out) == sorted(texts)
    assert pipeline.stats.sources["source0"].bad_json == 1  # still reported from the cache
  with open(path, "a") as f:  # an edited corpus gets a fresh copy
    f.write(json.dumps({"text": "one more"}) + "\n")
  third, encoded = build()
  assert encoded == len(texts) + 1 and len(list((tmp_path / "cache").iterdir())) == 2


def test_row_window_shuffle_is_a_resumable_permutation_of_each_window():
  import grain
  from phi1.data.shuffle import WindowShuffleIterDataset

  ds = WindowShuffleIterDataset(grain.MapDataset.range(23).to_iter_dataset(), window_size=5, seed=1)
  out = list(ds)
  assert out != list(range(23))
  for start in range(0, 23, 5):
    assert sorted(out[start:start + 5]) == list(range(start, min(start + 5, 23)))
  it = iter(ds)
  for k in range(24):
    resumed = iter(ds)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    assert list(resumed) == out[k:]
    if k < 23:
      assert next(it) == out[k]


def test_data_gen_output_directory_is_a_source(tmp_path):
  """A `python -m data_gen exercises --out DIR` folder reads as one source: finished shards only."""
  from data_gen.shards import ShardWriter
  from phi1.data import records
  rows = [{"id": f"e{i}", "prompt": f"def f{i}():\n", "completion": f"    return {i}\n",
           "text": f"def f{i}():\n    return {i}\n", "source": "synthetic_exercises"}
          for i in range(5)]
  with ShardWriter(str(tmp_path), kind="exercises", shard_size=2) as writer:
    for row in rows:
      writer.append(row)
  stats = records.SourceStats(str(tmp_path))
  docs = list(records.read_documents(str(tmp_path), stats))
  assert len(records.source_files(str(tmp_path))) == 3  # shards of 2, 2 and 1 rows
  assert docs == [(r["prompt"], r["completion"]) for r in rows]
  assert stats.documents == len(docs) and stats.problems == 0
