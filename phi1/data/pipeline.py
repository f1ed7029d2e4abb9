"""The grain pipeline: sources -> split / shard -> shuffle -> tokens -> pack -> mix -> batch.

    data = phi1.data.build(config.data, seq_len=512, batch_size=8)
    it = iter(data.train)             # infinite, checkpointable grain DatasetIterator
    batch = next(it)                  # dict of numpy arrays, below
    for batch in data.eval_batches(num_batches=4): ...
    log(data.stats.as_dict())         # bad / empty records per source

Batches (per process, `batch_size / process_count` rows of `seq_len`):
  inputs [B, T] int32, targets [B, T] int32 (inputs shifted by one within the token stream),
  loss_mask [B, T] float32 (0 on padding and, with loss_on_prompt=False, on prompt targets), and
  with packing="document" also segment_ids [B, T] int32 (1-based, 0 = pad), positions [B, T] int32.

Sharding across JAX processes is by document: process p reads documents p, p + P, p + 2P, ... of
every source (after the eval split), so processes see disjoint data that covers the source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping

import grain
import numpy as np

from phi1.data import mixture as mixture_lib
from phi1.data import records
from phi1.data.packing import PACKINGS, DocumentToExample, PackIterDataset
from phi1.data.shuffle import EpochShuffle, WindowShuffleIterDataset
from phi1.data.token_docs import (FORMAT_VERSION, ArrayRecordDocs, InMemoryDocs, Subset,
                                  is_pretokenized)

# The eval split must not move when the training seed changes.
_EVAL_SPLIT_SEED = 20230620
_TEXT_SOURCE_WARN_BYTES = 2 << 30


def _split_indices(n: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  if eval_fraction <= 0.0:
    return np.arange(n), np.arange(0)
  if not eval_fraction < 1.0:
    raise ValueError(f"data.eval_fraction must be in [0, 1), got {eval_fraction}")
  is_eval = np.random.default_rng(_EVAL_SPLIT_SEED).random(n) < eval_fraction
  if n > 1 and not is_eval.any():
    is_eval[0] = True  # a tiny source still gives a (tiny) eval set
  return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def _source_specs(sources) -> list[dict]:
  specs = []
  for i, src in enumerate(sources):
    if isinstance(src, (str, os.PathLike)):
      src = {"path": os.fspath(src)}
    if not isinstance(src, Mapping) and not hasattr(src, "keys"):
      raise ValueError(f"data.sources[{i}] must be a path or {{path, weight, name}}, got {src!r}")
    unknown = set(src.keys()) - {"path", "weight", "name"}
    if unknown or "path" not in src:
      raise ValueError(f"data.sources[{i}] = {dict(src)}: keys are path (required), weight, name")
    weight = float(src.get("weight", 1.0))
    if weight < 0:
      raise ValueError(f"data.sources[{i}].weight must be >= 0, got {weight}")
    name = src.get("name") or f"source{i}"
    specs.append({"path": os.fspath(src["path"]), "weight": weight, "name": name})
  if len({s["name"] for s in specs}) != len(specs):
    raise ValueError(f"data.sources names must be unique: {[s['name'] for s in specs]}")
  return specs


def _check_exists(path: str, key: str) -> None:
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{key}: {path} does not exist. Point it at a JSON lines / Parquet file, a directory of "
        ".py files or a `phi1 pretokenize` output directory; for the CPU demo corpus run "
        "phi1.demo_corpus.build(cache_dir).")


def tokenized_copy(path: str, tokenizer, cache_dir: str) -> str:
  """`cache_dir/<key>`: `path` pre-tokenized by `tokenizer`, written on first use.

  The key covers the file's (or .py directory's files') path, size and mtime and the tokenizer
  fingerprint, so an edited corpus or another tokenizer gets a fresh copy.
  """
  from phi1 import pretokenize  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(path)
  files = records.source_files(path)
  identity = [path, tokenizer.fingerprint, FORMAT_VERSION]
  identity += [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
  out = os.path.join(os.path.abspath(cache_dir), f"{os.path.basename(path)}-{key}")
  if not is_pretokenized(out):
    logging.info("tokenizing %s once into %s", path, out)
    pretokenize.pretokenize([path], out, tokenizer, num_shards=4, log=logging.info)
  return out


class DataPipeline:
  """Everything the trainer needs from the data; see the module docstring."""

  def __init__(self, config, *, seq_len: int, batch_size: int, tokenizer=None,
               process_index: int | None = None, process_count: int | None = None,
               model_vocab_size: int | None = None):
    if process_index is None or process_count is None:
      import jax  # pylint: disable=import-outside-toplevel
      process_index, process_count = jax.process_index(), jax.process_count()
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} "
                       "JAX processes; every process loads batch_size / process_count rows")
    mixture_lib.check(config.mixture)  # before any source is read
    if config.packing not in PACKINGS:
      raise ValueError(f"data.packing must be one of {PACKINGS}, got {config.packing!r}")
    self.config, self.seq_len = config, seq_len
    self.local_batch_size = batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.stats = records.DataStats()

    specs = _source_specs(config.sources)
    if not any(s["weight"] > 0 for s in specs):
      raise ValueError("data.sources is empty (or all weights are 0): add at least one "
                       "{path, weight} entry")
    for i, s in enumerate(specs):
      _check_exists(s["path"], f"data.sources[{i}].path")
    for i, path in enumerate(config.eval_sources):
      _check_exists(os.fspath(path), f"data.eval_sources[{i}]")
    self.tokenizer = tokenizer
    if self.tokenizer is None and config.tokenizer:
      from phi1.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
      self.tokenizer = load_tokenizer(config.tokenizer)
    self.eos_id: int | None = self.tokenizer.eos_id if self.tokenizer else None
    self.vocab_size: int | None = self.tokenizer.vocab_size if self.tokenizer else None

    eval_fraction = 0.0 if len(config.eval_sources) else float(config.eval_fraction)
    self._train_docs, self._eval_docs, self._weights = {}, [], {}
    for s in specs:
      if s["weight"] == 0:
        continue
      train, held_out = self._load(s["path"], s["name"], eval_fraction)
      if len(train) == 0:
        raise ValueError(f"data source {s['name']} ({s['path']}) has no usable documents for "
                         f"process {process_index} of {process_count}:\n{self.stats.summary()}")
      self._train_docs[s["name"]] = train
      self._weights[s["name"]] = s["weight"]
      if len(held_out):
        self._eval_docs.append(held_out)
    for i, path in enumerate(config.eval_sources):
      self._eval_docs.append(self._load(os.fspath(path), f"eval{i}", 0.0)[0])
    if model_vocab_size is not None and self.vocab_size > model_vocab_size:
      raise ValueError(
          f"model.vocab_size {model_vocab_size} is smaller than the tokenizer's {self.vocab_size} "
          f"ids: set model.vocab_size >= {self.vocab_size} (phi-1 pads 50295 to 51200, a multiple "
          "of 64, for fast matmuls)")
    # Row share of each source (the trainer prints it with the data stats).
    self.mixture_shares = mixture_lib.shares(
        config.mixture, self._weights,
        {name: mixture_lib.num_tokens(docs) for name, docs in self._train_docs.items()})
    self.train = self._train_dataset()

  def _load(self, path: str, name: str, eval_fraction: float):
    """(train docs, eval docs) of one source, this process's share only."""
    p, n_proc = self.process_index, self.process_count
    if self.config.cache_dir and not is_pretokenized(path):
      if self.tokenizer is None:
        raise ValueError(f"{path} is a text source, so data.tokenizer must name a tokenizer")
      path = tokenized_copy(path, self.tokenizer, self.config.cache_dir)
    if is_pretokenized(path):
      docs = ArrayRecordDocs(path, self.stats, name)
      self._check_tokenizer(docs.meta, path)
      for problems in docs.meta.get("inputs", {}).values():  # bad records found at tokenize time
        for field in ("bad_json", "missing_text", "empty_text", "undecodable"):
          self.stats.add(name, field, problems.get(field, 0))
          self.stats.add(name, "records", problems.get(field, 0))
      train_idx, eval_idx = _split_indices(len(docs), eval_fraction)
      return Subset(docs, train_idx[p::n_proc]), Subset(docs, eval_idx[p::n_proc])
    if self.tokenizer is None:
      raise ValueError(f"{path} is a text source, so data.tokenizer must name a tokenizer "
                       "(*.model or tokenizer.json); or pre-tokenize it with `phi1 pretokenize`")
    if os.path.isfile(path) and os.path.getsize(path) > _TEXT_SOURCE_WARN_BYTES:
      logging.warning("%s is large; every run re-tokenizes text sources. Run `phi1 pretokenize` "
                      "once and train from its output instead.", path)
    source_stats = self.stats.source(name, path)
    documents = list(records.read_documents(path, source_stats))
    train_idx, eval_idx = _split_indices(len(documents), eval_fraction)
    train = InMemoryDocs.tokenize([documents[i] for i in train_idx[p::n_proc]], self.tokenizer)
    held_out = InMemoryDocs.tokenize([documents[i] for i in eval_idx[p::n_proc]], self.tokenizer)
    source_stats.tokens += train.num_tokens + held_out.num_tokens
    return train, held_out

  def _check_tokenizer(self, meta: dict, path: str) -> None:
    if self.tokenizer is not None:
      if meta["tokenizer_fingerprint"] != self.tokenizer.fingerprint:
        raise ValueError(
            f"{path} was tokenized with {meta['tokenizer_path']} (fingerprint "
            f"{meta['tokenizer_fingerprint']}), but data.tokenizer is {self.config.tokenizer} "
            f"(fingerprint {self.tokenizer.fingerprint}); re-run `phi1 pretokenize` or point "
            "data.tokenizer at the tokenizer the shards were made with")
      return
    if self.eos_id is None:
      self.eos_id, self.vocab_size = int(meta["eos_id"]), int(meta["vocab_size"])
    elif (self.eos_id, self.vocab_size) != (meta["eos_id"], meta["vocab_size"]):
      raise ValueError(f"{path} uses eos {meta['eos_id']} / vocab {meta['vocab_size']}, other "
                       f"sources {self.eos_id} / {self.vocab_size}: use one tokenizer for all")

  def _to_example(self):
    return DocumentToExample(self.eos_id, bool(self.config.loss_on_prompt))

  def _read_options(self) -> grain.ReadOptions:
    threads = int(self.config.read_threads)
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=64 * threads)

  def _train_dataset(self) -> grain.IterDataset:
    to_example, seed = self._to_example(), int(self.config.shuffle_seed)
    packed = {}
    for i, (name, docs) in enumerate(self._train_docs.items()):
      source_seed = (seed * 1_000_003 + 7_919 * (i + 1)) % 2**32
      ds = grain.MapDataset.source(EpochShuffle(docs, source_seed))
      ds = ds.map(to_example).to_iter_dataset(self._read_options())
      packed[name] = PackIterDataset(ds, seq_len=self.seq_len, packing=self.config.packing)
    if len(packed) == 1:
      rows = next(iter(packed.values()))
    else:
      rows = grain.IterDataset.mix(packed, self.mixture_shares)
    if self.config.row_shuffle_window > 1:
      rows = WindowShuffleIterDataset(rows, window_size=int(self.config.row_shuffle_window),
                                      seed=seed)
    batches = rows.batch(self.local_batch_size, drop_remainder=True)
    if self.config.prefetch_batches > 0:
      batches = grain.experimental.ThreadPrefetchIterDataset(
          batches, prefetch_buffer_size=int(self.config.prefetch_batches))
    return batches

  def eval_batches(self, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over this process's held-out documents, in order.

    The last batch is padded (loss_mask 0). With `num_batches`, exactly that many batches come out
    (cut short, or topped up with fully padded batches): multi-host evaluation needs every process
    to run the same number of steps.
    """
    if not self._eval_docs:
      raise ValueError("no eval data: set data.eval_sources or data.eval_fraction > 0")
    docs = grain.MapDataset.concatenate([grain.MapDataset.source(d) for d in self._eval_docs])
    ds = docs.map(self._to_example()).to_iter_dataset(grain.ReadOptions(num_threads=0))
    rows = PackIterDataset(ds, seq_len=self.seq_len, packing=self.config.packing, pad_last=True)
    count = 0
    for batch in rows.batch(self.local_batch_size, drop_remainder=False):
      if num_batches is not None and count == num_batches:
        return
      yield self._pad_batch(batch)
      count += 1
    while num_batches is not None and count < num_batches:
      yield self._pad_batch(None)
      count += 1

  def _pad_batch(self, batch: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    B, T = self.local_batch_size, self.seq_len
    keys = ["inputs", "targets", "loss_mask"]
    if self.config.packing == "document":
      keys += ["segment_ids", "positions"]
    out = {}
    for k in keys:
      full = np.zeros((B, T), np.float32 if k == "loss_mask" else np.int32)
      if batch is not None:
        full[:len(batch[k])] = batch[k]
      out[k] = full
    return out


def build(config, *, seq_len: int, batch_size: int, tokenizer=None,
          process_index: int | None = None, process_count: int | None = None,
          model_vocab_size: int | None = None) -> DataPipeline:
  """`batch_size` is global; process `process_index` (default: jax's) loads its share of rows.

  `tokenizer` overrides `config.tokenizer`; `model_vocab_size`, when given, is checked to cover
  every id the data can hold.
  """
  return DataPipeline(config, seq_len=seq_len, batch_size=batch_size, tokenizer=tokenizer,
                      process_index=process_index, process_count=process_count,
                      model_vocab_size=model_vocab_size)


def checkpoint_save_args(iterator: grain.DatasetIterator):
  """Orbax args that save a train iterator's position, e.g. in a Composite with the model:

      manager.save(step, args=ocp.args.Composite(state=..., data=checkpoint_save_args(it)))

  grain writes one small JSON per process (`process_<i>-of-<n>.json`), so restore needs the same
  process count.
  """
  return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: grain.DatasetIterator):
  """Orbax args that restore `iterator` (a fresh `iter(data.train)`) in place; see above."""
  return grain.checkpoint.CheckpointRestore(iterator)
