"""Reading raw documents from record files, counting (never raising on) bad records.

A document is `(prompt, text)`: plain records (`text`, the corpus contract in DESIGN.md §3) have an
empty prompt; exercise records (`prompt` + `completion`, CodeExercises) keep the two apart so the
loss on the prompt can be masked. Sources:
  - JSON lines: `*.jsonl`, `*.json`, optionally gzipped (`*.jsonl.gz`, `*.json.gz`);
  - Parquet: `*.parquet`, and Arrow: `*.arrow` (`datasets.save_to_disk`), with columns `text`, or
    `prompt` + `completion`;
  - a directory of `.py` files (each file one document; PEP 263 encodings honoured).
Rows are read by `phi1.data.rows` (data_gen reads with it too). Pre-tokenized ArrayRecord shards
are read by `phi1.data.token_docs`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
import tokenize
from collections.abc import Iterator

from phi1.data import rows

Document = tuple[str, str]  # (prompt, text); prompt == "" for plain documents



@dataclasses.dataclass
class SourceStats:
  """Counts for one source; every record lands in exactly one of documents or a problem bucket."""

  path: str
  records: int = 0          # lines, rows, files or ArrayRecord entries looked at
  documents: int = 0        # usable documents
  tokens: int = 0           # tokens (no eos) this process tokenized; all, if pre-tokenized
  bad_json: int = 0         # a line that is not a JSON object
  missing_text: int = 0     # no string `text` (nor string `prompt` + `completion`)
  empty_text: int = 0       # text (prompt + completion) empty or whitespace only
  undecodable: int = 0      # bytes that are not valid text in their declared encoding
  surrogates: int = 0       # kept: lone UTF-16 surrogates (JSON escapes) replaced by U+FFFD
  corrupt_records: int = 0  # pre-tokenized records failing their checksum or format check
  corrupt_shards: int = 0   # ArrayRecord shards unreadable or shorter than their metadata says

  @property
  def problems(self) -> int:
    return (self.bad_json + self.missing_text + self.empty_text + self.undecodable
            + self.corrupt_records + self.corrupt_shards)


class DataStats:
  """Per-source counters the trainer logs; thread-safe because grain reads in threads."""

  def __init__(self):
    self.sources: dict[str, SourceStats] = {}
    self._lock = threading.Lock()

  def source(self, name: str, path: str) -> SourceStats:
    with self._lock:
      if name not in self.sources:
        self.sources[name] = SourceStats(path=path)
      return self.sources[name]

  def add(self, name: str, field: str, n: int = 1) -> None:
    with self._lock:
      stats = self.sources[name]
      setattr(stats, field, getattr(stats, field) + n)

  @property
  def problems(self) -> int:
    return sum(s.problems for s in self.sources.values())

  def counters(self, name: str) -> dict[str, int]:
    stats = self.sources[name]
    return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != "path"}

  def as_dict(self) -> dict[str, int]:
    """Flat `data/<source>/<counter>` ints, ready for metrics.jsonl or TensorBoard."""
    return {f"data/{name}/{k}": v for name in self.sources for k, v in self.counters(name).items()}

  def summary(self) -> str:
    lines = []
    for name, s in self.sources.items():
      problems = {k: v for k, v in self.counters(name).items()
                  if k not in ("records", "documents", "tokens", "surrogates") and v}
      lines.append(f"{name} ({s.path}): {s.documents} documents, {s.tokens} tokens"
                   + (f"; skipped {problems}" if problems else ""))
    return "\n".join(lines)


def _document_from_record(record, stats: SourceStats) -> Document | None:
  if not isinstance(record, dict):
    stats.bad_json += 1
    return None
  prompt, completion = record.get("prompt"), record.get("completion")
  if isinstance(prompt, str) and isinstance(completion, str):
    doc = (prompt, completion)
  elif isinstance(record.get("text"), str):
    doc = ("", record["text"])
  else:
    stats.missing_text += 1
    return None
  if not (doc[0] + doc[1]).strip():
    stats.empty_text += 1
    return None
  stats.documents += 1
  return doc


def _json_lines(path: str, stats: SourceStats) -> Iterator[Document]:
  for record in rows.iter_rows(path, counts=stats, undecodable="skip"):
    doc = _document_from_record(record, stats)
    if doc is not None:
      yield doc


def _table_rows(path: str, stats: SourceStats) -> Iterator[Document]:
  """Parquet or Arrow (`datasets.save_to_disk`) rows: columns `text`, or `prompt` + `completion`."""
  names = _table_columns(path)
  columns = [c for c in ("text", "prompt", "completion") if c in names]
  if not columns:
    raise ValueError(f"{path} has none of the columns text / prompt + completion (it has {names})")
  for record in rows.iter_rows(path, counts=stats, columns=columns):
    doc = _document_from_record({k: v for k, v in record.items() if v is not None}, stats)
    if doc is not None:
      yield doc


def _table_columns(path: str) -> list[str]:
  if rows.file_format(path) == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    return pq.ParquetFile(path).schema_arrow.names
  batch = next(rows._arrow_batches(path), None)  # pylint: disable=protected-access
  return batch.schema.names if batch is not None else []


def decode_source(data: bytes) -> str | None:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    pass
  try:  # PEP 263 coding cookie, as Python itself reads the file
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)
  except (SyntaxError, UnicodeDecodeError, LookupError):
    return None


def python_files(directory: str) -> list[str]:
  """Every `.py` file under `directory`, sorted so document indices are stable across runs."""
  out = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    out.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))
  return out


def _python_directory(path: str, stats: SourceStats) -> Iterator[Document]:
  for file in python_files(path):
    stats.records += 1
    with open(file, "rb") as f:
      text = decode_source(f.read())
    if text is None:
      stats.undecodable += 1
    elif not text.strip():
      stats.empty_text += 1
    else:
      stats.documents += 1
      yield ("", text)


def is_shard_directory(path: str) -> bool:
  """A `python -m data_gen textbooks|exercises` output: manifest.json + finished shards."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json"))


def manifest_shards(path: str) -> list[str]:
  """The finished shards a data_gen output directory's manifest.json lists, in order.

  The manifest is the contract between data_gen and phi1 (phi1 never imports data_gen): the writer
  rewrites it atomically after each shard is complete, so every file it names is whole."""
  manifest_path = os.path.join(path, "manifest.json")
  try:
    with open(manifest_path) as f:
      shards = json.load(f)["shards"]
    files = [os.path.join(path, shard["file"]) for shard in shards]
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{manifest_path} is not a data_gen manifest (expected a 'shards' list of "
                     f"{{'file': ...}} entries): {e}") from e
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"{manifest_path} lists shards that are not there: {missing[:3]}; "
                            "copy the whole output directory")
  return files


def source_files(path: str) -> list[str]:
  """The files a source reads: finished data_gen shards, .py files of a directory, or itself."""
  if is_shard_directory(path):
    return manifest_shards(path)
  return python_files(path) if os.path.isdir(path) else [path]


def _shard_directory(path: str, stats: SourceStats) -> Iterator[Document]:
  # Only shards with a completion marker: a run still writing (or killed) adds nothing half-done.
  for file in source_files(path):
    yield from (_json_lines if rows.file_format(file) == "json" else _table_rows)(file, stats)


def is_text_source(path: str) -> bool:
  return rows.file_format(path) is not None or os.path.isdir(path)


def read_documents(path: str, stats: SourceStats) -> Iterator[Document]:
  """Yields the usable documents of a text source in file order; bad records only bump `stats`."""
  if is_shard_directory(path):
    return _shard_directory(path, stats)
  if os.path.isdir(path):
    return _python_directory(path, stats)
  if rows.file_format(path) == "json":
    return _json_lines(path, stats)
  if rows.file_format(path) in ("parquet", "arrow"):
    return _table_rows(path, stats)
  raise ValueError(f"cannot read {path}: expected *.jsonl[.gz], *.json[.gz], *.parquet, *.arrow, a "
                   "directory of .py files, a data_gen output directory (manifest.json), or a `phi1 pretokenize` "
                   "directory (metadata.json)")
