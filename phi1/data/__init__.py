"""Data for phi1: tokenized documents packed into fixed-length rows by a grain pipeline.

Modules: `records` (reading raw records, bad-record counters), `token_docs` (tokenized documents in
memory or in pre-tokenized ArrayRecord shards), `packing` (concat / document packing), `pipeline`
(split, shard, shuffle, mix, batch, eval, checkpoint args), `config` (the `data` config block).
"""

from phi1.data.config import default_config
from phi1.data.packing import PACKINGS, DocumentToExample, PackIterDataset
from phi1.data.pipeline import (
    DataPipeline,
    build,
    checkpoint_restore_args,
    checkpoint_save_args,
)
from phi1.data.records import DataStats, SourceStats, read_documents
from phi1.data.token_docs import ArrayRecordDocs, InMemoryDocs, read_metadata

__all__ = [
    "PACKINGS", "ArrayRecordDocs", "DataPipeline", "DataStats", "DocumentToExample",
    "InMemoryDocs", "PackIterDataset", "SourceStats", "build", "checkpoint_restore_args",
    "checkpoint_save_args", "default_config", "read_documents", "read_metadata",
]
