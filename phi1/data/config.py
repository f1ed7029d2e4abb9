"""The `data` block of an experiment config; every key documented where it is set."""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Training sources, mixed by weight. Each entry: {"path": ..., "weight": float, "name": str}
  # (name optional; a bare path string means weight 1). A path is a JSON lines file (*.jsonl,
  # *.jsonl.gz), a Parquet file, a directory of .py files, or a directory written by
  # `phi1 pretokenize`. Records carry `text`, or `prompt` + `completion` (exercises).
  # CodeTextbook (paper §2) = [{"path": filtered_code, ...}, {"path": textbooks, ...}].
  c.sources = []
  # Each source is packed on its own and rows are drawn from source i with probability
  # proportional to weight_i x tokens_i under mixture "tokens" (every weight 1: each token seen
  # equally often, the paper's concatenation, §2), or to weight_i alone under "weights" (fixed
  # shares whatever the sizes). See phi1/data/mixture.py.
  c.mixture = "tokens"
  # Tokenizer: *.model (SentencePiece), tokenizer.json, or a directory holding one. Needed for
  # text sources; pre-tokenized sources are checked against it (eos id, fingerprint).
  c.tokenizer = ""
  # "concat": the paper's concatenate-and-slice (documents joined by <|endoftext|>, full causal
  # attention across them). "document": the same rows plus segment_ids / positions so attention
  # stays within each document (the paper does not say which it used).
  c.packing = "concat"
  # Exercises (prompt + completion): train on the prompt tokens too (True: plain next-token loss
  # on everything, what "same format" in paper §2.3 reads as) or only on the completion (False).
  c.loss_on_prompt = True
  # Seed of the document shuffle (reshuffled every epoch) and of the row shuffle window.
  c.shuffle_seed = 0
  # Rows are shuffled in windows of this many, so one batch does not hold consecutive slices of
  # one long file. 1 disables it.
  c.row_shuffle_window = 256
  # Held-out data for eval loss: explicit files (list of paths, read in order) ...
  c.eval_sources = []
  # ... or, when eval_sources is empty, this fraction of every training source's documents
  # (chosen by a fixed hash of the document index, independent of shuffle_seed), excluded from
  # training. 0 with no eval_sources: no eval split.
  c.eval_fraction = 0.0
  # Where text sources are tokenized to, once (ArrayRecord, as `phi1 pretokenize` writes), keyed
  # by the file (path, size, mtime) and the tokenizer; later runs read that copy and skip
  # tokenizing. Empty: tokenize in memory at every start (each process only its share).
  c.cache_dir = ""
  # Threads reading and decoding documents (pre-tokenized shards benefit; in-memory text is
  # fastest with 0). Batches are prefetched by one extra thread this deep (0 = no prefetch).
  c.read_threads = 0
  c.prefetch_batches = 4
  return c
