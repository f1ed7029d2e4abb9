"""Crash safety of data_gen.shards: torn writes, interrupted finishes, full disks, concurrent writers."""

import errno
import glob
import gzip
import json
import os

import pyarrow.parquet as pq
import pytest

from data_gen import shards
from data_gen.shards import OutputLocked, ShardWriter, read_records


def _records(start, stop):
  return [{"id": f"r{i}", "text": f"text {i}", "source": "test", "usage": {"tokens": i}}
          for i in range(start, stop)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip_manifest_and_markers(tmp_path, fmt):
  with ShardWriter(str(tmp_path), kind="textbooks", fmt=fmt, shard_size=4, meta={"model": "m"}) as w:
    for r in _records(0, 10):
      w.append(r)
  manifest = json.load(open(tmp_path / "manifest.json"))
  assert manifest["records"] == 10 and [s["records"] for s in manifest["shards"]] == [4, 4, 2]
  assert manifest["kind"] == "textbooks" and manifest["model"] == "m"
  for shard in manifest["shards"]:
    assert os.path.exists(tmp_path / (shard["file"] + ".done"))
  assert not glob.glob(str(tmp_path / "*.partial"))
  assert [r["id"] for r in read_records(str(tmp_path))] == [f"r{i}" for i in range(10)]
  first = str(tmp_path / manifest["shards"][0]["file"])
  if fmt == "jsonl":  # what the trainer reads: plain gzip JSON lines with `text`
    with gzip.open(first, "rt") as f:
      assert json.loads(f.readline())["text"] == "text 0"
  else:
    assert pq.read_table(first).column("text").to_pylist()[0] == "text 0"


def test_rerun_continues_and_rejects_duplicates(tmp_path):
  with ShardWriter(str(tmp_path), kind="exercises", shard_size=100) as w:
    for r in _records(0, 3):
      w.append(r)
  with ShardWriter(str(tmp_path), kind="exercises", shard_size=100) as w:
    assert w.ids == {"r0", "r1", "r2"}
    with pytest.raises(ValueError, match="duplicate"):
      w.append(_records(1, 2)[0])
    w.append(_records(3, 4)[0])
  assert len(read_records(str(tmp_path))) == 4
  with pytest.raises(ValueError, match="holds exercises"):
    ShardWriter(str(tmp_path), kind="textbooks")


def test_torn_partial_line_is_dropped_on_recovery(tmp_path):
  w = ShardWriter(str(tmp_path), kind="textbooks", shard_size=100)
  for r in _records(0, 5):
    w.append(r)
  partial = glob.glob(str(tmp_path / "*.partial"))[0]
  w._partial_file.write(b'{"id": "r5", "text": "torn')  # the process dies mid-write
  w._lock.close()  # (the OS releases the lock of a dead process)
  w2 = ShardWriter(str(tmp_path), kind="textbooks", shard_size=100)
  assert w2.ids == {f"r{i}" for i in range(5)} and not os.path.exists(partial)
  w2.append(_records(5, 6)[0])
  w2.close()
  assert sorted(r["id"] for r in read_records(str(tmp_path))) == [f"r{i}" for i in range(6)]


def test_crash_between_marker_and_rename_is_completed(tmp_path, monkeypatch):
  w = ShardWriter(str(tmp_path), kind="textbooks", shard_size=3)
  real_replace = os.replace

  def crash_on_data_rename(src, dst):
    if dst.endswith(".jsonl.gz"):
      raise KeyboardInterrupt("killed")
    real_replace(src, dst)

  monkeypatch.setattr(shards.os, "replace", crash_on_data_rename)
  with pytest.raises(KeyboardInterrupt):
    for r in _records(0, 3):
      w.append(r)
  monkeypatch.setattr(shards.os, "replace", real_replace)
  assert not glob.glob(str(tmp_path / "shard-*.jsonl.gz"))  # readers see nothing half-done
  w._lock.close()
  with ShardWriter(str(tmp_path), kind="textbooks", shard_size=3) as w2:
    assert len(w2) == 3
  assert len(read_records(str(tmp_path), include_partial=False)) == 3
  assert len(read_records(str(tmp_path))) == 3  # and not twice (partial removed)


def test_full_disk_loses_and_duplicates_nothing(tmp_path):
  w = ShardWriter(str(tmp_path), kind="textbooks", shard_size=100)
  for r in _records(0, 3):
    w.append(r)

  class FullDisk:
    def __init__(self, f):
      self.f = f

    def write(self, data):  # half a record reaches the file, then ENOSPC
      self.f.write(data[:len(data) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
      return getattr(self.f, name)

  w._partial_file = FullDisk(w._partial_file)
  with pytest.raises(OSError):
    w.append(_records(3, 4)[0])
  assert len(w) == 3
  w._partial_file = w._partial_file.f
  w.append(_records(4, 5)[0])  # space is back: the torn half-record was cut off
  w.close()
  assert [r["id"] for r in read_records(str(tmp_path))] == ["r0", "r1", "r2", "r4"]


def test_second_writer_is_refused(tmp_path):
  with ShardWriter(str(tmp_path), kind="textbooks"):
    with pytest.raises(OutputLocked, match="another data_gen run"):
      ShardWriter(str(tmp_path), kind="textbooks")
