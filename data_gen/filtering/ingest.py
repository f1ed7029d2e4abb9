"""Ingest: turn directories of .py files, record files and Q/A dumps into corpus records.

A record is a dict with a stable `id`, the `text`, its `source`, a `kind` ("code", "qa" or "text"),
`python_ok` (True/False for code, None where not checked) and `meta` (everything else the input
carried: The Stack's repo/path/license fields, a Q/A record's tags and answer scores, ...).

Inputs (data_gen/filtering/inputs.py lists a source's files; anything else, or inputs that yield
no record, is an error naming the layouts):
- "default": the Python source installed on this machine, the standard library then site-packages
  (real, varied code that every machine has); "stdlib" and "site-packages" for one of the two;
- record files, or a directory of them: JSON lines (`*.jsonl[.gz]`), Parquet (The Stack's
  `content` + `hexsha` schema), Arrow (a `datasets.save_to_disk` folder: data-*.arrow beside
  dataset_info.json and state.json), a Stack Exchange dump's `Posts.xml` (data_gen/filtering/qa.py);
- a directory without record files: its *.py files; or a single .py file.
Rows: text from `text_field` if given, else `text`, or `content` (The Stack's schema), or a Q/A
layout (qa.py); id from `id_field` (default `id`; The Stack's `hexsha`/`blob_id` also count). A row
without an id is an error unless `assign_ids=True`, which derives one from the file name and row
number (stable while the file is). Ids seen twice are counted (`duplicate_ids` in the summary).

Work is split by piece (phi1/data/rows.py: row groups, record batches, byte ranges of plain JSON
lines, whole .py files), so each task reads only its share however many files there are.
Bad input is counted per row or file, never fatal: undecodable bytes are replaced by U+FFFD, lone
surrogates too, lines that are not JSON objects skipped; binary files (NUL bytes, not UTF-8) and
files over `max_bytes` are skipped; Python that does not parse is kept with `python_ok=False`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import warnings
from typing import Any, Iterable, Iterator

import numpy as np

from data_gen.filtering import qa
from data_gen.filtering.inputs import LAYOUTS, input_files, named_py_files
from phi1 import atomic
from phi1.data import rows as rows_lib

DEFAULT_MAX_BYTES = 1_000_000  # The Stack drops files over 1 MB; so do we.
_STACK_ID_FIELDS = ("hexsha", "blob_id")
_TEXT_FIELDS = ("text", "content")
# Row and file problems, each a stage statistic (summary.json) and an IngestStats field.
_ROW_COUNTS = {"undecodable": "replaced_undecodable", "surrogates": "replaced_surrogates",
               "bad_json": "skipped_bad_json", "bad_xml": "skipped_bad_xml",
               "unanswered": "skipped_unanswered"}


@dataclasses.dataclass
class IngestStats:
  seen: int = 0            # files or rows looked at
  records: int = 0         # records produced
  bytes: int = 0           # UTF-8 bytes of the produced records' text
  skipped_binary: int = 0
  skipped_huge: int = 0
  skipped_unreadable: int = 0
  skipped_empty: int = 0
  skipped_bad_json: int = 0     # lines that are not a JSON object
  skipped_bad_xml: int = 0      # Posts.xml rows that do not parse
  skipped_unanswered: int = 0   # Posts.xml questions without a usable answer
  replaced_undecodable: int = 0  # rows kept with non-UTF-8 bytes replaced by U+FFFD
  replaced_surrogates: int = 0   # rows kept with lone surrogates replaced by U+FFFD
  unparsable: int = 0      # code records kept with python_ok=False
  rows_read: int = 0       # files and rows decoded (with `limit`, more than were used)

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


class MissingIdError(ValueError):
  pass


def iter_records(source: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 workers: int = 1, limit: int | None = None, id_field: str = "id",
                 text_field: str | None = None, assign_ids: bool = False,
                 check_python: bool = True, stats: IngestStats | None = None) -> Iterator[dict]:
  """Yields records from `source` (see the module docstring) in input order; counts into `stats`.
  `check_python=False` skips the parse check (python_ok is then None): callers that parse anyway.
  `workers` > 1 parses in a process pool."""
  stats = stats if stats is not None else IngestStats()
  reader = _Reader(str(source), id_field=id_field, text_field=text_field, assign_ids=assign_ids,
                   on_count=lambda name, n: setattr(stats, name, getattr(stats, name) + n))
  items = reader.items(0, 1, limit=limit)
  finish = _Finisher(max_bytes, check_python, text_field)
  if workers > 1:
    pool = process_pool(workers)
    results = pool.imap(finish, items, chunksize=16)
  else:
    pool, results = None, map(finish, items)
  try:
    for outcome, record in results:
      stats.seen += 1
      if outcome != "ok":
        setattr(stats, f"skipped_{outcome}", getattr(stats, f"skipped_{outcome}") + 1)
        continue
      stats.records += 1
      stats.bytes += record.pop("_bytes")
      stats.unparsable += record["python_ok"] is False
      yield record
      if limit is not None and stats.records >= limit:
        return
  finally:
    if pool is not None:
      pool.terminate()


def process_pool(workers: int, initializer=None, initargs=()):
  """A process pool for the filtering stages. `fork` where it is safe (fast start, nothing
  pickled); `forkserver` once JAX is loaded, because forking a multithreaded process can deadlock
  the child (JAX warns as much); `spawn` where neither exists."""
  methods = multiprocessing.get_all_start_methods()
  if "jax" in sys.modules and "forkserver" in methods:
    method = "forkserver"
  else:
    method = "fork" if "fork" in methods else "spawn"
  return multiprocessing.get_context(method).Pool(workers, initializer=initializer,
                                                  initargs=initargs)


def _pieces(files: list[str], piece_bytes: int) -> list[rows_lib.Piece]:
  return [p for f in files
          for p in ([rows_lib.Piece(f, weight=os.path.getsize(f))] if qa.is_posts_xml(f)
                    else rows_lib.pieces(f, piece_bytes))]


class _Reader:
  """A task's share of the inputs as raw items: ("file", path, id, source) for a .py file,
  ("row", row, id, source) for a record. `on_count(name, n)` receives the IngestStats counts
  of problems met while reading (undecodable rows, bad JSON lines, ...)."""

  def __init__(self, source: str, *, id_field: str = "id", text_field: str | None = None,
               assign_ids: bool = False, piece_bytes: int = rows_lib.PIECE_BYTES,
               on_count=None, on_unreadable=None):
    self.source, self.id_field, self.text_field = source, id_field, text_field
    self.assign_ids, self.piece_bytes = assign_ids, piece_bytes
    self.on_count = on_count or (lambda name, n: None)
    self.on_unreadable = on_unreadable

  def items(self, rank: int, world_size: int, *, limit: int | None = None) -> Iterator[tuple]:
    """Files go to tasks round robin; record files are cut into pieces (row groups, record
    batches, byte ranges) and each task reads a contiguous run of about equal weight, so a row
    is decoded by one task only. With `limit` (a trial run) the first `limit` rows are dealt
    round robin: each task reads at most that many."""
    kind, files = input_files(self.source)
    if kind == "py":
      named = itertools.islice(named_py_files(self.source), limit)
      for f, rid, source in itertools.islice(named, rank, None, world_size):
        self.on_count("rows_read", 1)
        yield ("file", f, rid, source)
      return
    pieces = _pieces(files, self.piece_bytes)
    if limit is None:
      for piece in rows_lib.assign(pieces, rank, world_size):
        yield from self._piece_items(piece)
      return
    every = (item for piece in pieces for item in self._piece_items(piece))
    yield from itertools.islice(itertools.islice(every, limit), rank, None, world_size)

  def _piece_items(self, piece: rows_lib.Piece) -> Iterator[tuple]:
    path = piece.path
    source = os.path.basename(path).split(".")[0]
    if qa.is_posts_xml(path):
      counts = qa.XmlCounts()
      rows = qa.posts_xml_rows(path, counts)
    else:
      counts = rows_lib.RowCounts()
      rows = rows_lib.iter_rows(path, counts=counts, undecodable="replace", piece=piece)
    try:
      for n, row in enumerate(self._guarded(path, rows)):
        self.on_count("rows_read", 1)
        yield ("row", row, self._id(row, path, piece, n), source)
    finally:
      for field, stat in _ROW_COUNTS.items():
        if getattr(counts, field, 0):
          self.on_count(stat, getattr(counts, field))

  def _guarded(self, path: str, rows: Iterator[dict]) -> Iterator[dict]:
    """A file that cannot be read on (a truncated gzip, a damaged Parquet page) is reported
    through `on_unreadable(path, rows read, error)` and the rest of its piece skipped."""
    import zlib
    n = 0
    while True:
      try:
        row = next(rows)
      except StopIteration:
        return
      except (OSError, EOFError, zlib.error, ValueError) as e:
        if self.on_unreadable is None or "JSON array" in str(e):
          raise
        self.on_unreadable(path, n, e)
        return
      n += 1
      yield row

  def _id(self, row: dict, path: str, piece: rows_lib.Piece, n: int) -> str:
    rid = row.get(self.id_field)
    if rid is None:
      rid = next((row[f] for f in _STACK_ID_FIELDS if row.get(f) is not None), None)
    if rid is None:
      if not self.assign_ids:
        raise MissingIdError(
            f"{path}: a row has no {self.id_field!r} field (nor 'hexsha'/'blob_id'); name the id "
            f"field with --id-field NAME, or pass --assign-ids to use '<file>:<row>' ids")
      # Rows are numbered within their piece (a row group, a batch, a byte range's start).
      rid = f"{os.path.basename(path)}:" + (f"{piece.start}." if piece.start else "") + str(n)
    return str(rid)


def python_ok(text: str) -> bool:
  """Whether `text` parses as Python 3 (SyntaxWarnings from old escapes are not errors)."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      ast.parse(text)
    return True
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return False


class _Finisher:
  """Reads/validates one raw item in a pool worker -> ("ok", record) or (skip reason, None)."""

  def __init__(self, max_bytes: int, check_python: bool = True, text_field: str | None = None):
    self.max_bytes = max_bytes
    self.check_python = check_python
    self.text_field = text_field

  def __call__(self, item: tuple) -> tuple[str, dict | None]:
    if item[0] == "file":
      return self._file(*item[1:])
    return self._row(*item[1:])

  def _file(self, path: str, rid: str, source: str) -> tuple[str, dict | None]:
    try:
      if os.path.getsize(path) > self.max_bytes:
        return "huge", None
      with open(path, "rb") as f:
        data = f.read()
    except OSError:
      return "unreadable", None
    if b"\x00" in data:
      return "binary", None
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError:
      return "binary", None
    if not text.strip():
      return "empty", None
    return "ok", {"id": rid, "text": text, "source": source, "kind": "code",
                  "python_ok": python_ok(text) if self.check_python else None,
                  "meta": {"path": path}, "_bytes": len(data)}

  def _row(self, row: dict[str, Any], rid: str, source: str) -> tuple[str, dict | None]:
    meta = dict(row)
    if self.text_field is not None:
      if not isinstance(row.get(self.text_field), str):
        raise ValueError(f"record {rid!r} has no text in --text-field {self.text_field!r} "
                         f"(fields: {sorted(row)})")
      field = self.text_field
    else:
      field = next((f for f in _TEXT_FIELDS if isinstance(row.get(f), str)), None)
    text = meta.pop(field) if field else None
    # The Stack's schema: a file's `content` plus repo/path/license metadata.
    kind = "code" if field in ("content", "code") else "text"
    if text is None:
      text = qa.qa_text(meta)
      kind = "qa"
    if text is None:
      raise ValueError(f"record {rid!r} has no text: expected 'text', 'content', a Q/A layout "
                       f"('question'+'answers', 'question'+'answer', 'title'+'body'+'answers') "
                       f"or --text-field NAME (fields: {sorted(row)})")
    data = text.encode("utf-8", errors="replace")
    if len(data) > self.max_bytes:
      return "huge", None
    if "\x00" in text:
      return "binary", None
    if not text.strip():
      return "empty", None
    meta.pop("id", None)
    lang = str(row.get("lang", row.get("language", "python"))).lower()
    checked = (python_ok(text) if self.check_python and kind == "code" and lang == "python"
               else None)
    return "ok", {"id": rid, "text": text, "source": str(meta.pop("source", source)), "kind": kind,
                  "python_ok": checked, "meta": meta, "_bytes": len(data)}


# -------------------------------------------------------------------------------- small helpers
def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
  """Writes records as JSON lines (atomically: a crash leaves no half file); returns the count."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = 0
  with atomic.open_for_write(path) as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
      n += 1
  return n


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Lists of `size` items (the last may be shorter); itertools.batched from Python 3.12."""
  it = iter(items)
  while batch := list(itertools.islice(it, size)):
    yield batch


def id_hashes(ids: Iterable[str]) -> np.ndarray:
  """Sorted 64-bit hashes of record ids: 8 bytes a record, to count repeats across tasks."""
  return np.sort(np.fromiter((int.from_bytes(hashlib.blake2b(i.encode("utf-8", "replace"),
                                                             digest_size=8).digest(), "little")
                              for i in ids), np.uint64))


def count_repeats(hashes: Iterable[np.ndarray]) -> int:
  """Ids seen more than once (each repeat counts), from the tasks' `id_hashes`."""
  every = np.sort(np.concatenate([np.zeros(0, np.uint64), *hashes]))
  return int(np.count_nonzero(every[1:] == every[:-1])) if len(every) else 0


# ---------------------------------------------------------------------------------- engine step
try:
  from datatrove.pipeline.base import PipelineStep
except ImportError:  # engine.require_datatrove() names the pip command before any step is built
  PipelineStep = object


class IngestInputs(PipelineStep):
  """Ingest as a datatrove step: reads this task's pieces of the inputs (`_Reader.items`), yields
  records as Documents and counts what it skipped or repaired in the stage stats (`rows_read`:
  rows and files decoded by this task). With `ids_dir`, writes the task's id hashes there for
  the stage's duplicate-id count."""
  type = "data_gen"
  name = "ingest"

  def __init__(self, source: str, *, max_bytes: int = DEFAULT_MAX_BYTES, limit: int | None = None,
               id_field: str = "id", text_field: str | None = None, assign_ids: bool = False,
               check_python: bool = True, ids_dir: str | None = None,
               piece_bytes: int = rows_lib.PIECE_BYTES):
    super().__init__()
    self.source, self.max_bytes, self.limit = str(source), max_bytes, limit
    self.check_python, self.ids_dir, self.piece_bytes = check_python, ids_dir, piece_bytes
    self.id_field, self.text_field, self.assign_ids = id_field, text_field, assign_ids

  def _unreadable(self, path: str, n: int, error: Exception):
    from datatrove.utils.logging import logger
    logger.error(f"{path}: unreadable input ({type(error).__name__}: {error}); skipped "
                 f"(after {n} rows)")
    self.stat_update("unreadable_shards")

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from data_gen.filtering.shard_steps import to_document
    finish = _Finisher(self.max_bytes, self.check_python, self.text_field)
    reader = _Reader(self.source, id_field=self.id_field, text_field=self.text_field,
                     assign_ids=self.assign_ids, piece_bytes=self.piece_bytes,
                     on_count=lambda name, n: self.stat_update(name, value=n),
                     on_unreadable=self._unreadable)
    ids = []
    for item in reader.items(rank, world_size, limit=self.limit):
      outcome, record = finish(item)
      self.stat_update("docs_in")
      if outcome != "ok":
        self.stat_update(f"skipped_{outcome}")
        continue
      self.stat_update("bytes_in", value=record.pop("_bytes"))
      if record["python_ok"] is False:
        self.stat_update("unparsable")
      if self.ids_dir is not None:
        ids.append(record["id"])
      yield to_document(record)
    if self.ids_dir is not None:
      os.makedirs(self.ids_dir, exist_ok=True)
      with atomic.open_for_write(os.path.join(self.ids_dir, f"ids-{rank:05d}.npy"), "wb") as f:
        np.save(f, id_hashes(ids))
