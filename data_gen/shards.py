"""Sharded, crash-safe record output: compressed JSON lines (default) or Parquet, plus a manifest.

Layout of an output directory:
    shard-00000.jsonl.gz        finished shards (or .parquet); only complete shards ever carry
    shard-00000.jsonl.gz.done   this name; each has a completion marker (JSON: records, sha256, ids)
    shard-00001.partial         the shard being filled: plain JSON lines, one flushed write per record
    manifest.json               rebuilt from the markers after every finished shard
    .lock                       held (flock) by the one writer; released by the OS if it dies

A finished shard is committed as: data to a hidden temp file, fsync; marker (atomic rename); rename
the data into place; delete the partial. Recovery (on open) redoes whichever of those steps a crash
interrupted, and drops a half-written last line from the partial. So a SIGKILL or a full disk at any
moment loses no stored record and stores none twice; readers that glob `shard-*.jsonl.gz` or read
the manifest only ever see complete shards.
"""

import errno
import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq

from phi1 import atomic
from phi1.data import rows

FORMATS = {"jsonl": ".jsonl.gz", "parquet": ".parquet"}
_SHARD = re.compile(r"^shard-(\d{5})(\.jsonl\.gz|\.parquet)$")


def write_shard(out_dir: str, index: int, records, fmt: str = "jsonl") -> dict:
  """Writes `records` as finished shard `index` of `out_dir` in one go (no partial file: the
  datatrove engine reruns a killed task whole) and returns its marker. The same bytes for the same
  records: gzip's header carries no time or name. JSON lines stream; Parquet is built in memory."""
  os.makedirs(out_dir, exist_ok=True)
  suffix = FORMATS[fmt]
  name = f"shard-{index:05d}{suffix}"
  tmp = os.path.join(out_dir, f".{name}.tmp")
  n = 0
  if suffix == ".jsonl.gz":
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                               compresslevel=6) as f:
      for r in records:
        f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
        n += 1
  else:
    rows = list(records)
    n = len(rows)
    with open(tmp, "wb") as f:
      f.write(_encode(rows, suffix))
  digest = hashlib.sha256()
  with open(tmp, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  marker = {"records": n, "bytes": os.path.getsize(tmp), "sha256": digest.hexdigest()}
  atomic.write_bytes(os.path.join(out_dir, name + ".done"), json.dumps(marker).encode())
  os.replace(tmp, os.path.join(out_dir, name))
  return marker


def write_manifest(out_dir: str, kind: str, **meta) -> dict:
  """manifest.json for a directory of finished shards (what `phi1.data` looks for)."""
  shards = []
  for path in shard_files(out_dir):
    with open(path + ".done") as f:
      marker = json.load(f)
    shards.append({"file": os.path.basename(path), "records": marker["records"],
                   "bytes": marker["bytes"], "sha256": marker["sha256"]})
  suffix = next((s for s in FORMATS.values() if shards and shards[0]["file"].endswith(s)),
                FORMATS["jsonl"])
  manifest = {"kind": kind, "format": suffix, "records": sum(s["records"] for s in shards),
              "shards": shards, **meta}
  os.makedirs(out_dir, exist_ok=True)
  atomic.write_bytes(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=1).encode())
  return manifest


def iter_shard(path: str, counts=None):
  """The records of one shard file, streamed (JSON lines) or by row group (Parquet)."""
  return rows.iter_rows(path, counts=counts)


class OutputLocked(RuntimeError):
  pass




def _encode(records: list[dict], suffix: str) -> bytes:
  if suffix == ".jsonl.gz":
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    return gzip.compress(lines, compresslevel=6, mtime=0)
  sink = pa.BufferOutputStream()
  pq.write_table(pa.Table.from_pylist(records), sink, compression="zstd")
  return sink.getvalue().to_pybytes()


def read_shard(path: str) -> list[dict]:
  return list(rows.iter_rows(path))


def _read_partial(path: str) -> tuple[list[dict], int]:
  """Complete records of a partial file and the byte length they occupy (a torn tail is ignored)."""
  records, good = [], 0
  with open(path, "rb") as f:
    data = f.read()
  for line in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
    try:
      records.append(json.loads(line))
    except ValueError:
      break
    good += len(line) + 1
  return records, good


def shard_files(out_dir: str) -> list[str]:
  """Finished shards (those with a completion marker), in order."""
  names = sorted(n for n in os.listdir(out_dir) if _SHARD.match(n)) if os.path.isdir(out_dir) else []
  return [os.path.join(out_dir, n) for n in names if os.path.exists(os.path.join(out_dir, n + ".done"))]


def read_records(out_dir: str, include_partial: bool = True) -> list[dict]:
  """Every stored record: finished shards, then (optionally) the complete lines of partials.

  Safe while a writer runs: a partial finished (renamed) under our feet means the listing is
  stale, so the read starts over from a fresh listing.
  """
  while True:
    finished_paths = shard_files(out_dir)
    records = [r for path in finished_paths for r in read_shard(path)]
    if not include_partial:
      return records
    finished = {os.path.basename(p).split(".")[0] for p in finished_paths}
    try:
      for path in sorted(glob.glob(os.path.join(out_dir, "shard-*.partial"))):
        if os.path.basename(path).split(".")[0] not in finished:
          records.extend(_read_partial(path)[0])
    except FileNotFoundError:
      continue
    return records


class ShardWriter:
  """Appends records to `out_dir`; see the module docstring for the on-disk protocol."""

  def __init__(self, out_dir: str, *, kind: str, fmt: str = "jsonl", shard_size: int = 10_000,
               meta: dict | None = None):
    if fmt not in FORMATS:
      raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if shard_size < 1:
      raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.kind, self.suffix, self.shard_size = out_dir, kind, FORMATS[fmt], shard_size
    self.meta = {}
    self._lock = open(os.path.join(out_dir, ".lock"), "w")
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._lock.close()
      raise OutputLocked(f"another data_gen run is writing to {out_dir}; wait for it or use "
                         "another --out") from None
    self._check_kind()
    self.meta.update(meta or {})
    self.ids: set[str] = set()
    self._partial_records: list[dict] = []
    self._partial_file = None
    self._recover()

  # Recovery -------------------------------------------------------------------------------------
  def _check_kind(self):
    manifest = os.path.join(self.out_dir, "manifest.json")
    if os.path.exists(manifest):
      with open(manifest) as f:
        existing = json.load(f)
      if existing.get("kind") not in (None, self.kind):
        raise ValueError(f"{self.out_dir} holds {existing['kind']} records, not {self.kind}; "
                         "use another --out")
      if existing.get("format") not in (None, self.suffix):
        raise ValueError(f"{self.out_dir} holds {existing['format']} shards; rerun with that format")
      self.meta = {k: v for k, v in existing.items() if k not in ("kind", "format", "records", "shards")}

  def _marker(self, index: int) -> str:
    return os.path.join(self.out_dir, f"shard-{index:05d}{self.suffix}.done")

  def _data(self, index: int) -> str:
    return os.path.join(self.out_dir, f"shard-{index:05d}{self.suffix}")

  def _tmp(self, index: int) -> str:
    return os.path.join(self.out_dir, f".shard-{index:05d}{self.suffix}.tmp")

  def _partial(self, index: int) -> str:
    return os.path.join(self.out_dir, f"shard-{index:05d}.partial")

  def _recover(self):
    self.markers: dict[int, dict] = {}
    for path in glob.glob(os.path.join(self.out_dir, f"shard-*{self.suffix}.done")):
      index = int(os.path.basename(path)[6:11])
      with open(path) as f:
        self.markers[index] = json.load(f)
      if not os.path.exists(self._data(index)):  # crashed between marker and rename: finish it
        os.replace(self._tmp(index), self._data(index))
      if os.path.exists(self._partial(index)):    # crashed before the partial was deleted
        os.remove(self._partial(index))
    for marker in self.markers.values():
      self.ids.update(marker["ids"])
    for name in os.listdir(self.out_dir):         # unmarked data can only be a torn temp file
      match = re.match(r"^\.shard-(\d{5}).*\.tmp$", name)
      if match and int(match.group(1)) not in self.markers:
        os.remove(os.path.join(self.out_dir, name))
    self.next_index = max(self.markers, default=-1) + 1
    partials = sorted(glob.glob(os.path.join(self.out_dir, "shard-*.partial")))
    for path in partials:  # normally at most one; each becomes a finished shard of its own
      records, good = _read_partial(path)
      with open(path, "r+b") as f:
        f.truncate(good)
      records = [r for r in records if r["id"] not in self.ids]
      index = int(os.path.basename(path)[6:11])
      if records:
        self._finish(index, records)
        self.ids.update(r["id"] for r in records)
        self.next_index = max(self.next_index, index + 1)
      os.remove(path)
    self._write_manifest()

  # Writing --------------------------------------------------------------------------------------
  def __len__(self) -> int:
    return len(self.ids)

  def append(self, record: dict):
    """Store one record durably (against process death); raises on a duplicate id or disk error."""
    if record["id"] in self.ids:
      raise ValueError(f"duplicate record id {record['id']}")
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    if self._partial_file is None:
      self._partial_file = open(self._partial(self.next_index), "ab", buffering=0)
    written = 0
    try:
      while written < len(line):  # unbuffered: each record reaches the OS in this call
        written += self._partial_file.write(line[written:])
    except OSError:
      # A torn line would make the next append unreadable: cut back to the last whole record.
      self._partial_file.truncate(self._partial_file.tell() - written)
      self._partial_file.seek(0, os.SEEK_END)
      raise
    self.ids.add(record["id"])
    self._partial_records.append(record)
    if len(self._partial_records) >= self.shard_size:
      self.flush_shard()

  def flush_shard(self):
    """Finish the current partial shard (if it holds anything)."""
    if not self._partial_records:
      return
    self._partial_file.close()
    self._partial_file = None
    self._finish(self.next_index, self._partial_records)
    os.remove(self._partial(self.next_index))
    self._partial_records = []
    self.next_index += 1
    self._write_manifest()

  def _finish(self, index: int, records: list[dict]):
    data = _encode(records, self.suffix)
    atomic.write_bytes(self._tmp(index), data)
    marker = {"records": len(records), "bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "ids": [r["id"] for r in records],
              "finished": time.time()}
    atomic.write_bytes(self._marker(index), json.dumps(marker).encode())
    os.replace(self._tmp(index), self._data(index))
    atomic.fsync_dir(self.out_dir)
    self.markers[index] = marker

  def _write_manifest(self):
    shards = [{"file": os.path.basename(self._data(i)), "records": m["records"], "bytes": m["bytes"],
               "sha256": m["sha256"]} for i, m in sorted(self.markers.items())]
    manifest = {"kind": self.kind, "format": self.suffix, "records": sum(s["records"] for s in shards),
                "shards": shards, **self.meta}
    atomic.write_bytes(os.path.join(self.out_dir, "manifest.json"),
                  json.dumps(manifest, indent=1).encode())

  def update_meta(self, **meta):
    self.meta.update(meta)
    self._write_manifest()

  def close(self):
    """Finish the partial shard; on a full disk leave it for the next run's recovery."""
    try:
      self.flush_shard()
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
    finally:
      if self._partial_file is not None:
        self._partial_file.close()
        self._partial_file = None
      self._lock.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
