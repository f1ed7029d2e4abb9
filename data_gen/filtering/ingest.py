"""Ingest: turn directories of .py files, JSON lines, Parquet and Q/A dumps into corpus records.

A record is a dict with a stable `id`, the `text`, its `source`, a `kind` ("code", "qa" or "text"),
`python_ok` (True/False for code, None where not checked) and `meta` (everything else the input
carried: The Stack's repo/path/license fields, a Q/A record's tags, ...).

Inputs (`iter_records(source)`):
- "default": the Python source installed on this machine, the standard library then site-packages
  (real, varied code that every machine has); "stdlib" and "site-packages" for one of the two.
- a directory: its *.jsonl / *.jsonl.gz / *.parquet files if it has any, else its *.py files;
- a single .py, .jsonl, .jsonl.gz or .parquet file.
JSON/Parquet rows: text from `text`, or `content` (The Stack's schema), or a question/answer pair
(`question`+`answer`, or StackExchange-style `title`+`body`+`answers`); id from `--id-field`
(default `id`; The Stack's `hexsha`/`blob_id` also count). A row without an id is an error unless
`assign_ids=True`, which derives one from the file name and row number (stable while the file is).

Bad input: binary files (NUL bytes or not UTF-8) and files over `max_bytes` are skipped and counted;
Python that does not parse is kept (it still counts for text statistics) with `python_ok=False`.
Parsing runs in a process pool (`workers`), the expensive part of ingest.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import sysconfig
import warnings
from typing import Any, Iterable, Iterator

DEFAULT_MAX_BYTES = 1_000_000  # The Stack drops files over 1 MB; so do we.
_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_STACK_ID_FIELDS = ("hexsha", "blob_id")
_TEXT_FIELDS = ("text", "content")


@dataclasses.dataclass
class IngestStats:
  seen: int = 0            # files or rows looked at
  records: int = 0         # records produced
  bytes: int = 0           # UTF-8 bytes of the produced records' text
  skipped_binary: int = 0
  skipped_huge: int = 0
  skipped_unreadable: int = 0
  skipped_empty: int = 0
  unparsable: int = 0      # code records kept with python_ok=False

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


class MissingIdError(ValueError):
  pass


def default_roots() -> dict[str, pathlib.Path]:
  """The embedded default corpus: this interpreter's standard library and site-packages."""
  paths = sysconfig.get_paths()
  return {"stdlib": pathlib.Path(paths["stdlib"]), "site-packages": pathlib.Path(paths["purelib"])}


def iter_records(source: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 workers: int = 1, limit: int | None = None, id_field: str = "id",
                 assign_ids: bool = False, check_python: bool = True,
                 stats: IngestStats | None = None, skip: int = 0) -> Iterator[dict]:
  """Yields records from `source` (see the module docstring); counts into `stats`.

  `check_python=False` skips the parse check (python_ok is then None): callers that parse anyway.
  `skip` passes over that many inputs (files or rows) unread: a resumed job, whose `stats` carry
  the counts up to there.
  """
  stats = stats if stats is not None else IngestStats()
  items = itertools.islice(_raw_items(str(source), id_field=id_field, assign_ids=assign_ids),
                           skip, None)
  finish = _Finisher(max_bytes, check_python)
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


def _raw_items(source: str, *, id_field: str, assign_ids: bool) -> Iterator[tuple]:
  """Cheap, ordered descriptions of the inputs; the pool does the reading and parsing."""
  if source in ("default", "stdlib", "site-packages"):
    roots = default_roots()
    for name in (["stdlib", "site-packages"] if source == "default" else [source]):
      yield from _py_files(roots[name], prefix=name,
                           exclude_dirs={"site-packages", "dist-packages"} if name == "stdlib" else set())
    return
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"ingest: {source!r} does not exist (give a directory, a .py/.jsonl/"
                            f".parquet file, or 'default' for the installed Python source)")
  if path.is_dir():
    record_files = sorted(p for p in path.rglob("*") if p.name.endswith(_RECORD_SUFFIXES))
    if record_files:
      for f in record_files:
        yield from _rows(f, id_field=id_field, assign_ids=assign_ids)
    else:
      yield from _py_files(path, prefix=path.name)
  elif path.name.endswith(_RECORD_SUFFIXES):
    yield from _rows(path, id_field=id_field, assign_ids=assign_ids)
  elif path.suffix == ".py":
    yield ("file", str(path), f"{path.parent.name}:{path.name}", path.parent.name)
  else:
    raise ValueError(f"ingest: cannot read {source!r}; expected a directory, .py, .jsonl[.gz] or "
                     f".parquet")


def _py_files(root: pathlib.Path, *, prefix: str, exclude_dirs: Iterable[str] = ()) -> Iterator[tuple]:
  exclude_dirs = set(exclude_dirs) | {"__pycache__"}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in exclude_dirs)
    for name in sorted(filenames):
      if name.endswith(".py"):
        full = os.path.join(dirpath, name)
        yield ("file", full, f"{prefix}:{os.path.relpath(full, root)}", prefix)


def _rows(path: pathlib.Path, *, id_field: str, assign_ids: bool) -> Iterator[tuple]:
  for n, row in enumerate(_read_rows(path)):
    rid = row.get(id_field)
    if rid is None:
      rid = next((row[f] for f in _STACK_ID_FIELDS if row.get(f) is not None), None)
    if rid is None:
      if not assign_ids:
        raise MissingIdError(
            f"{path}: row {n} has no {id_field!r} field (nor 'hexsha'/'blob_id'); name the id field "
            f"with --id-field NAME, or pass --assign-ids to use '<file>:<row>' ids")
      rid = f"{path.name}:{n}"
    yield ("row", row, str(rid), path.name.split(".")[0])


def _read_rows(path: pathlib.Path) -> Iterator[dict]:
  if path.name.endswith(".parquet"):
    import pyarrow.parquet as pq  # only Parquet users pay for pyarrow's import
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
      yield from batch.to_pylist()
    return
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


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

  def __init__(self, max_bytes: int, check_python: bool = True):
    self.max_bytes = max_bytes
    self.check_python = check_python

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
                  "python_ok": python_ok(text) if self.check_python else None, "meta": {"path": path}, "_bytes": len(data)}

  def _row(self, row: dict[str, Any], rid: str, source: str) -> tuple[str, dict | None]:
    meta = dict(row)
    field = next((f for f in _TEXT_FIELDS if isinstance(row.get(f), str)), None)
    text = meta.pop(field) if field else None
    # The Stack's schema: a file's `content` plus repo/path/license metadata.
    kind = "code" if field == "content" else "text"
    if text is None:
      text = _qa_text(meta)
      kind = "qa"
    if text is None:
      raise ValueError(f"record {rid!r} has no text: expected 'text', 'content', "
                       f"'question'+'answer' or 'title'+'body'+'answers' (fields: {sorted(row)})")
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


def _qa_text(row: dict[str, Any]) -> str | None:
  """StackOverflow-style records as one document: the question, then its answers."""
  if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
    question, answers = row.pop("question"), [row.pop("answer")]
  elif isinstance(row.get("body"), str) and "answers" in row:
    title = row.pop("title", "") or ""
    question = f"{title}\n\n{row.pop('body')}".strip()
    answers = [a["body"] if isinstance(a, dict) else str(a) for a in row.pop("answers") or []]
  else:
    return None
  return "\n\n".join([f"Question: {question}", *(f"Answer: {a}" for a in answers)])


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
  """Writes records as JSON lines (atomically: a crash leaves no half file); returns the count."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Lists of `size` items (the last may be shorter); itertools.batched from Python 3.12."""
  it = iter(items)
  while batch := list(itertools.islice(it, size)):
    yield batch


def read_jsonl(path: str | os.PathLike, skip: int = 0) -> Iterator[dict]:
  """The records of a JSON-lines file; the first `skip` are passed over without being parsed."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        if skip:
          skip -= 1
          continue
        yield json.loads(line)


# ---------------------------------------------------------------------------------- engine step
def input_files(source: str) -> tuple[str, list[str]]:
  """("py", the .py files) or ("rows", the record files) of `source`, in input order."""
  if source in ("default", "stdlib", "site-packages"):
    return "py", [item[1] for item in _raw_items(source, id_field="id", assign_ids=True)]
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"ingest: {source!r} does not exist (give a directory, a .py/.jsonl/"
                            f".parquet file, or 'default' for the installed Python source)")
  if path.is_dir():
    record_files = sorted(str(p) for p in path.rglob("*") if p.name.endswith(_RECORD_SUFFIXES))
    if record_files:
      return "rows", record_files
    return "py", [item[1] for item in _py_files(path, prefix=path.name)]
  if path.name.endswith(_RECORD_SUFFIXES):
    return "rows", [str(path)]
  if path.suffix == ".py":
    return "py", [str(path)]
  raise ValueError(f"ingest: cannot read {source!r}; expected a directory, .py, .jsonl[.gz] or "
                   f".parquet")


def _task_items(source: str, rank: int, world_size: int, *, limit: int | None, id_field: str,
                assign_ids: bool, on_unreadable) -> Iterator[tuple]:
  """This task's share of the inputs. Files go to tasks round robin (The Stack's many Parquet
  files: each task reads only its own); with `limit`, or fewer record files than tasks, rows of
  the one input stream do (row i to task i mod world_size)."""
  kind, files = input_files(source)
  if kind == "py":
    items = _raw_items(source, id_field=id_field, assign_ids=assign_ids)
    yield from itertools.islice(itertools.islice(items, limit), rank, None, world_size)
    return
  if limit is None and len(files) >= world_size:
    for f in files[rank::world_size]:
      yield from _readable_rows(f, id_field, assign_ids, on_unreadable)
    return
  rows = (row for f in files for row in _readable_rows(f, id_field, assign_ids, on_unreadable))
  yield from itertools.islice(itertools.islice(rows, limit), rank, None, world_size)


def _readable_rows(path: str, id_field: str, assign_ids: bool, on_unreadable) -> Iterator[tuple]:
  """The rows of one record file; a file that cannot be read (or breaks off) is reported through
  `on_unreadable(path, rows read, error)` and the rest of it skipped. Rows without an id stay an
  error: that is a setting to fix (--id-field / --assign-ids), not a damaged file."""
  import zlib
  rows = _rows(pathlib.Path(path), id_field=id_field, assign_ids=assign_ids)
  n = 0
  while True:
    try:
      row = next(rows)
    except StopIteration:
      return
    except MissingIdError:
      raise
    except (OSError, EOFError, ValueError, zlib.error, UnicodeDecodeError) as e:
      on_unreadable(path, n, e)
      return
    n += 1
    yield row


try:
  from datatrove.pipeline.base import PipelineStep
except ImportError:  # engine.require_datatrove() names the pip command before any step is built
  PipelineStep = object


class IngestInputs(PipelineStep):
  """Ingest as a datatrove step: reads this task's inputs (see `_task_items`), yields records as
  Documents and counts what it skipped (binary, huge, unreadable, empty) in the stage stats."""
  type = "data_gen"
  name = "ingest"

  def __init__(self, source: str, *, max_bytes: int = DEFAULT_MAX_BYTES, limit: int | None = None,
               id_field: str = "id", assign_ids: bool = False, check_python: bool = True):
    super().__init__()
    self.source, self.max_bytes, self.limit = str(source), max_bytes, limit
    self.check_python = check_python
    self.id_field, self.assign_ids = id_field, assign_ids

  def _unreadable(self, path: str, n: int, error: Exception):
    from datatrove.utils.logging import logger
    logger.error(f"{path}: unreadable input ({type(error).__name__}: {error}); skipped "
                 f"(after {n} rows)")
    self.stat_update("unreadable_shards")

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from data_gen.filtering.shard_steps import to_document
    finish = _Finisher(self.max_bytes, self.check_python)
    for item in _task_items(self.source, rank, world_size, limit=self.limit,
                            id_field=self.id_field, assign_ids=self.assign_ids,
                            on_unreadable=self._unreadable):
      outcome, record = finish(item)
      self.stat_update("docs_in")
      if outcome != "ok":
        self.stat_update(f"skipped_{outcome}")
        continue
      self.stat_update("bytes_in", value=record.pop("_bytes"))
      if record["python_ok"] is False:
        self.stat_update("unparsable")
      yield to_document(record)
