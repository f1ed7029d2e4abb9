"""A memory and process-count cgroup per sandbox worker (cgroup v1 or v2, where writable).

rlimits bound one process; a program that forks multiplies them (256 processes x 2 GiB). A cgroup
bounds the worker and everything under it together, tmpfs pages of its /tmp included, so no program
can push the host into its OOM killer. Used by sandbox.py; off (and said so) where not writable.
"""

import os
import time

ROOT = "/sys/fs/cgroup"


def _own_paths() -> dict[str, str]:
  """{controller or "" for v2: our cgroup path} from /proc/self/cgroup."""
  paths = {}
  with open("/proc/self/cgroup") as f:
    for line in f:
      _, controllers, path = line.rstrip("\n").split(":", 2)
      for c in controllers.split(",") if controllers else [""]:
        paths[c] = path
  return paths


def _v1_dir(controller: str, own: dict[str, str]) -> str | None:
  base = os.path.join(ROOT, controller)
  if controller in own and os.path.isdir(base):
    return os.path.join(base, own[controller].lstrip("/"))
  return None


def _v2_dir(own: dict[str, str]) -> str | None:
  for base in (ROOT, os.path.join(ROOT, "unified")):
    if "" in own and os.path.exists(os.path.join(base, "cgroup.subtree_control")):
      parent = os.path.join(base, own[""].lstrip("/"))
      try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
          enabled = f.read().split()
      except OSError:
        continue
      if {"memory", "pids"} <= set(enabled):
        return parent
  return None


class WorkerCgroup:
  """Created per worker; `procs_files` are what the worker's launcher writes its pid into."""

  def __init__(self, name: str, memory_bytes: int, max_pids: int):
    self.dirs: list[str] = []
    self.procs_files: list[str] = []
    own = _own_paths()
    memory, pids = _v1_dir("memory", own), _v1_dir("pids", own)
    try:
      if memory and pids:
        self._make(os.path.join(memory, name), {"memory.limit_in_bytes": memory_bytes,
                                                "memory.memsw.limit_in_bytes": memory_bytes})
        self._make(os.path.join(pids, name), {"pids.max": max_pids})
      elif (parent := _v2_dir(own)) is not None:
        self._make(os.path.join(parent, name), {"memory.max": memory_bytes, "memory.swap.max": 0,
                                                "pids.max": max_pids})
      else:
        raise OSError("no writable memory and pids cgroup controllers")
    except OSError:
      self.remove()
      raise

  @property
  def memory_stat(self) -> str:
    """The memory controller's statistics file (anon/rss and shmem charged to the worker)."""
    return os.path.join(self.dirs[0], "memory.stat")

  def _make(self, path: str, limits: dict[str, int]):
    os.mkdir(path)
    self.dirs.append(path)
    for name, value in limits.items():
      file = os.path.join(path, name)
      if os.path.exists(file) or not name.endswith(("swap.max", "memsw.limit_in_bytes")):
        with open(file, "w") as f:
          f.write(str(value))
    self.procs_files.append(os.path.join(path, "cgroup.procs"))

  def remove(self):
    """After the worker was killed; its namespace may take a moment to empty."""
    for path in reversed(self.dirs):
      for _ in range(5000):
        try:
          os.rmdir(path)
          break
        except FileNotFoundError:
          break
        except OSError:  # EBUSY while a dying process is still inside (a millisecond or two)
          time.sleep(0.001)
    self.dirs = []
