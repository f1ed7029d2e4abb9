"""The one reader of record files: JSON lines (plain or gzipped), Parquet and Arrow, as dicts.

`phi1.data.records` (training), `data_gen.shards` (record shards) and data_gen's ingest (corpus
inputs) all read rows here. A file splits into `Piece`s that tasks read independently, each row
decoded by exactly one piece: byte ranges of a plain JSON-lines file (a line belongs to the range
its first byte is in), Parquet row groups, Arrow record batches (`datasets.save_to_disk` writes
Arrow IPC streams); a gzipped file is one piece (gzip cannot be entered in the middle).

Damage is per row, never per file: a line that is not a JSON object is skipped and counted; bytes
that are not UTF-8 are skipped (`undecodable="skip"`) or replaced by U+FFFD ("replace") and
counted; lone UTF-16 surrogates (a JSON `"\\ud800"` escape, which Python decodes but cannot encode
again) become U+FFFD and are counted. Counts go to any object with the `RowCounts` attributes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from typing import Any, Iterator, Sequence

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
PIECE_BYTES = 64 << 20   # plain JSON lines are cut into ranges of about this many bytes
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass
class RowCounts:
  records: int = 0       # rows looked at (non-blank lines; Parquet/Arrow rows)
  bad_json: int = 0      # skipped: a line that is not a JSON object
  undecodable: int = 0   # a row with bytes that are not UTF-8 (skipped or replaced)
  surrogates: int = 0    # a row with lone surrogates, replaced by U+FFFD


@dataclasses.dataclass(frozen=True)
class Piece:
  """Part of one file: bytes [start, stop) of JSON lines, or Parquet row groups / Arrow batches
  [start, stop). `weight` (bytes or rows) balances pieces between tasks."""
  path: str
  start: int = 0
  stop: int | None = None   # None: to the end
  weight: int = 1


def file_format(path: str) -> str | None:
  name = os.path.basename(path)
  if name.endswith(JSON_SUFFIXES):
    return "json"
  if name.endswith(PARQUET_SUFFIXES):
    return "parquet"
  if name.endswith(ARROW_SUFFIXES):
    return "arrow"
  return None


def pieces(path: str, piece_bytes: int = PIECE_BYTES) -> list[Piece]:
  """`path` cut into pieces that together read each row once (see the module docstring)."""
  fmt = file_format(path)
  if fmt == "parquet":
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(path).metadata
    return [Piece(path, g, g + 1, max(1, meta.row_group(g).total_byte_size))
            for g in range(meta.num_row_groups)]
  if fmt == "arrow":
    sizes = [b.nbytes for b in _arrow_batches(path)]
    return [Piece(path, i, i + 1, max(1, n)) for i, n in enumerate(sizes)]
  size = os.path.getsize(path)
  if path.endswith(".gz") or size <= piece_bytes:
    return [Piece(path, 0, None, max(1, size))]
  return [Piece(path, a, min(a + piece_bytes, size), min(piece_bytes, size - a))
          for a in range(0, size, piece_bytes)]


def assign(all_pieces: Sequence[Piece], rank: int, world_size: int) -> list[Piece]:
  """Task `rank`'s pieces: contiguous runs of about equal weight, so the tasks' outputs in rank
  order are the input order; every piece goes to exactly one task."""
  total = sum(p.weight for p in all_pieces) or 1
  mine, before = [], 0
  for p in all_pieces:
    if min(world_size - 1, (before + p.weight / 2) * world_size // total) == rank:
      mine.append(p)
    before += p.weight
  return mine


def iter_rows(path: str, *, counts=None, undecodable: str = "skip",
              columns: Sequence[str] | None = None, piece: Piece | None = None) -> Iterator[dict]:
  """The rows (dicts) of a record file, or of one piece of it; problems go to `counts`."""
  counts = counts if counts is not None else RowCounts()
  if undecodable not in ("skip", "replace"):
    raise ValueError(f"undecodable must be 'skip' or 'replace', got {undecodable!r}")
  fmt = file_format(path)
  start, stop = (piece.start, piece.stop) if piece is not None else (0, None)
  if fmt == "parquet":
    import pyarrow.parquet as pq
    parquet = pq.ParquetFile(path)
    groups = range(start, parquet.metadata.num_row_groups if stop is None else stop)
    if not groups:
      return
    batches = parquet.iter_batches(batch_size=1024, row_groups=list(groups), columns=columns)
    yield from _table_rows(batches, counts, undecodable)
  elif fmt == "arrow":
    batches = (b for i, b in enumerate(_arrow_batches(path))
               if i >= start and (stop is None or i < stop))
    if columns is not None:
      batches = (b.select([c for c in columns if c in b.schema.names]) for b in batches)
    yield from _table_rows(batches, counts, undecodable)
  elif fmt == "json":
    yield from _json_rows(path, start, stop, counts, undecodable)
  else:
    raise ValueError(f"cannot read {path}: expected *.jsonl[.gz], *.json[.gz], *.parquet or *.arrow")


def _json_rows(path: str, start: int, stop: int | None, counts, undecodable: str) -> Iterator[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    if start > 0:
      f.seek(start - 1)
      f.readline()   # the line that began before `start` is the previous piece's
    first = start == 0
    while stop is None or f.tell() < stop:
      line = f.readline()
      if not line:
        return
      if not line.strip():
        continue
      if first and line.lstrip().startswith(b"["):
        raise ValueError(f"{path} looks like one JSON array; this reads JSON lines (one object "
                         "per line): convert it, e.g. with `jq -c '.[]'`")
      first = False
      counts.records += 1
      try:
        text = line.decode("utf-8")
      except UnicodeDecodeError:
        counts.undecodable += 1
        if undecodable == "skip":
          continue
        text = line.decode("utf-8", errors="replace")
      try:
        row = json.loads(text)
      except ValueError:
        counts.bad_json += 1
        continue
      if not isinstance(row, dict):
        counts.bad_json += 1
        continue
      if _SURROGATE_ESCAPE.search(line) and _has_surrogate(row):
        counts.surrogates += 1
        row = _without_surrogates(row)
      yield row


def _table_rows(batches, counts, undecodable: str) -> Iterator[dict]:
  for batch in batches:
    try:
      rows = batch.to_pylist()
    except UnicodeDecodeError:   # a string column holding bytes that are not UTF-8: row by row
      rows = []
      for i in range(batch.num_rows):
        try:
          rows.append(batch.slice(i, 1).to_pylist()[0])
        except UnicodeDecodeError:
          counts.records += 1
          counts.undecodable += 1
    for row in rows:
      counts.records += 1
      yield row


def _arrow_batches(path: str):
  """Record batches of an Arrow IPC stream (`datasets.save_to_disk`) or file, memory-mapped:
  batches a task skips are never copied or decoded."""
  import pyarrow as pa
  source = pa.memory_map(path)
  try:
    reader = pa.ipc.open_stream(source)
    yield from reader
  except pa.ArrowInvalid:
    source = pa.memory_map(path)
    reader = pa.ipc.open_file(source)
    for i in range(reader.num_record_batches):
      yield reader.get_batch(i)


def _has_surrogate(value: Any) -> bool:
  if isinstance(value, str):
    return _SURROGATE.search(value) is not None
  if isinstance(value, dict):
    return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
  if isinstance(value, list):
    return any(_has_surrogate(v) for v in value)
  return False


def _without_surrogates(value: Any) -> Any:
  """Lone surrogates -> U+FFFD; a valid escaped pair (an emoji written as two escapes) is kept."""
  if isinstance(value, str):
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
  if isinstance(value, dict):
    return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_without_surrogates(v) for v in value]
  return value
