"""phi1/atomic.py: a write either lands whole or leaves the old file; no temp file stays behind."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from phi1 import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writes_land_whole(tmp_path):
  atomic.write_text(tmp_path / "a.txt", "héllo")
  atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
  atomic.write_json(tmp_path / "c.json", {"x": 1}, indent=2)
  with atomic.replacing(tmp_path / "d.npy") as tmp, open(tmp, "wb") as f:
    np.save(f, np.arange(3))  # a path ending in .tmp would get np.save's .npy appended
  assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1}
  assert np.load(tmp_path / "d.npy").tolist() == [0, 1, 2]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.npy"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
  target = tmp_path / "state.json"
  atomic.write_json(target, {"step": 1})
  with pytest.raises(RuntimeError):
    with atomic.open_for_write(target) as f:
      f.write('{"step": 2, "half')
      raise RuntimeError("disk full")
  assert json.loads(target.read_text()) == {"step": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_killed_writer_never_leaves_a_half_file(tmp_path):
  target = tmp_path / "big.txt"
  atomic.write_text(target, "old")
  code = ("import os, sys; from phi1 import atomic\n"
          "with atomic.open_for_write(sys.argv[1]) as f:\n"
          "  f.write('x' * 100000); f.flush(); os._exit(9)\n")
  proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO,
                        env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 9 and target.read_text() == "old"
  leftovers = [p.name for p in tmp_path.iterdir() if p.name != "big.txt"]
  assert all(re.fullmatch(r"\.big\.txt\.[0-9a-f]{12}\.tmp", n) for n in leftovers)


def test_new_files_get_the_umask_permissions_not_a_private_temp_mode(tmp_path):
  plain = tmp_path / "plain"
  plain.write_text("x")
  atomic.write_text(tmp_path / "atomic", "x")
  assert os.stat(tmp_path / "atomic").st_mode == os.stat(plain).st_mode


def test_only_whole_file_modes(tmp_path):
  with pytest.raises(ValueError, match="whole files"):
    with atomic.open_for_write(tmp_path / "x", "a"):
      pass
