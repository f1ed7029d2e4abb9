"""Data for phi1: tokenized documents packed into fixed-length rows by a grain pipeline.

Modules: `rows` (the one reader of JSON-lines / Parquet / Arrow files, in pieces; data_gen uses it
too), `records` (raw records as documents, bad-record counters), `token_docs` (tokenized documents in
memory or in pre-tokenized ArrayRecord shards), `packing` (concat / document packing), `pipeline`
(split, shard, shuffle, mix, batch, eval, checkpoint args), `config` (the `data` config block).

The names below are imported on first use (PEP 562): `records` is plain Python, and the corpus
tools that read records through it (data_gen, phi1.demo_corpus) must not pull in grain and with it
JAX - a process with JAX loaded cannot fork its engine workers safely and falls back to the slow
forkserver start (data_gen/engine.py).
"""

import importlib

_EXPORTS = {
    "default_config": "config",
    "PACKINGS": "packing", "DocumentToExample": "packing", "PackIterDataset": "packing",
    "DataPipeline": "pipeline", "build": "pipeline", "checkpoint_restore_args": "pipeline",
    "checkpoint_save_args": "pipeline",
    "DataStats": "records", "SourceStats": "records", "read_documents": "records",
    "ArrayRecordDocs": "token_docs", "InMemoryDocs": "token_docs", "read_metadata": "token_docs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'phi1.data' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"phi1.data.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
