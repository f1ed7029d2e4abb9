"""Record shards as datatrove pipeline steps: each task reads its input shards and writes one shard.

Records keep their schema (id, text, source, kind, python_ok, meta, ...): a datatrove Document
carries the text and id, and the rest of the record rides in `metadata["record"]`. Shards are
`data_gen.shards` files (shard-NNNNN.jsonl.gz or .parquet, each with its completion marker) plus
a manifest.json, so `phi1.data` and `python -m data_gen report` read a stage's output directly.
"""

from __future__ import annotations

import json
import os
import pathlib
import zlib
from typing import Callable, Iterator

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from phi1 import atomic
from data_gen import engine, shards


def to_document(record: dict) -> Document:
  rest = {k: v for k, v in record.items() if k not in ("id", "text")}
  return Document(text=record["text"], id=str(record["id"]), metadata={"record": rest})


def to_record(doc: Document) -> dict:
  return {"id": doc.id, "text": doc.text, **doc.metadata.get("record", {})}


def is_shard_directory(path: str | os.PathLike) -> bool:
  """A stage's (or textbooks/exercises') output: finished shards or a manifest.json."""
  return bool(shards.shard_files(str(path))) or os.path.isfile(os.path.join(path, "manifest.json"))


def input_shards(input_dir: str | os.PathLike) -> list[str]:
  files = shards.shard_files(str(input_dir))
  if not files and not os.path.isfile(os.path.join(input_dir, "manifest.json")):
    raise FileNotFoundError(
        f"{input_dir} holds no finished record shards (shard-*.jsonl.gz or .parquet with their "
        ".done markers): run the stage that writes it first, or for raw files (.py, .jsonl, "
        "Parquet) `python -m data_gen filter --input PATH --skip annotate,embed,classify,score,"
        "select`, whose ingest/records/ and dedup/records/ are shards")
  return files


def rank_shards(input_dir: str | os.PathLike, rank: int, world_size: int) -> list[str]:
  """Task `rank` reads shards rank, rank + world_size, ...: with as many tasks as the writing
  stage had, task r reads shard r."""
  return input_shards(input_dir)[rank::world_size]


_UNREADABLE = (OSError, EOFError, ValueError, zlib.error, UnicodeDecodeError)


def read_records(path: str, on_unreadable: Callable[[str, int, Exception], None]) -> Iterator[dict]:
  """The records of one shard; a shard that breaks off is reported through `on_unreadable`
  (path, records read before the damage, error) and the rest of it skipped."""
  n = 0
  records = shards.iter_shard(path)
  while True:
    try:
      record = next(records)
    except StopIteration:
      return
    except _UNREADABLE as e:
      on_unreadable(path, n, e)
      return
    n += 1
    yield record


class ReadShards(PipelineStep):
  """Reads this task's shards of `input_dir`; unreadable shards are logged and counted."""
  type = "data_gen"
  name = "read shards"

  def __init__(self, input_dir: str | os.PathLike):
    super().__init__()
    self.input_dir = str(input_dir)

  def _unreadable(self, path: str, n: int, error: Exception):
    logger.error(f"{path}: unreadable shard ({type(error).__name__}: {error}); skipped "
                 f"(after {n} records)")
    self.stat_update("unreadable_shards")

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    for path in rank_shards(self.input_dir, rank, world_size):
      for record in read_records(path, self._unreadable):
        self.stat_update("docs_in")
        self.stat_update("bytes_in", value=len(record["text"].encode("utf-8", "replace")))
        yield to_document(record)


class WriteShard(PipelineStep):
  """Writes the task's documents as shard `rank` of `out_dir` (always one shard per task, empty
  or not, so the next stage's task r reads shard r)."""
  type = "data_gen"
  name = "write shard"

  def __init__(self, out_dir: str | os.PathLike, fmt: str = "jsonl",
               row: Callable[[Document], dict] = to_record):
    super().__init__()
    self.out_dir, self.fmt, self.row = str(out_dir), fmt, row

  def run(self, data, rank: int = 0, world_size: int = 1):
    def rows():
      for doc in data:
        self.stat_update("docs_out")
        yield self.row(doc)
    marker = shards.write_shard(self.out_dir, rank, rows(), self.fmt)
    self.stat_update("bytes_out", value=marker["bytes"], unit="shard")
    return iter(())


class FinishStage(PipelineStep):
  """The last step of a stage (one task): manifests for its output directories, and
  `summary.json` made by `summarise(stats)` from the stage's datatrove stats."""
  type = "data_gen"
  name = "finish stage"

  def __init__(self, stage_dir: str | os.PathLike, outputs: dict[str, str],
               summarise: Callable[[dict], dict], meta: dict | None = None,
               summary_extra: dict | None = None):
    super().__init__()
    self.stage_dir, self.outputs = str(stage_dir), dict(outputs)
    self.summarise, self.meta = summarise, dict(meta or {})
    self.summary_extra = dict(summary_extra or {})

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    for out_dir, kind in self.outputs.items():
      shards.write_manifest(out_dir, kind, **self.meta)
    stats = {path.name: engine.step_stats(self.stage_dir, path.name)
             for path in sorted((pathlib.Path(self.stage_dir) / "_engine").iterdir())
             if path.is_dir()}
    write_summary(self.stage_dir, {**self.summary_extra, **self.summarise(stats)})
    return iter(())


def write_summary(stage_dir: str | os.PathLike, summary: dict) -> None:
  atomic.write_json(pathlib.Path(stage_dir) / "summary.json", summary, indent=1)


def read_summary(stage_dir: str | os.PathLike) -> dict | None:
  path = pathlib.Path(stage_dir) / "summary.json"
  return json.loads(path.read_text()) if path.exists() else None


def count(stats: dict, step: str, label: str) -> int:
  """A count from `FinishStage`'s stats: the sum of `label` over one engine step's pipeline."""
  return int(sum(block.get(label, 0) for block in stats.get(step, {}).values()))


def timed(stage_dir: str | os.PathLike, seconds: float) -> dict:
  """Adds wall seconds and rates to a stage's summary (local/ray: the run is this process's)."""
  summary = read_summary(stage_dir) or {}
  summary.update(seconds=round(seconds, 3),
                 docs_per_s=round(summary.get("docs_in", 0) / max(seconds, 1e-9), 1),
                 mb_per_s=round(summary.get("bytes_in", 0) / 1e6 / max(seconds, 1e-9), 3))
  write_summary(stage_dir, summary)
  return summary
