"""Writing a file so that no reader, and no crash, ever sees half of it.

The bytes go to a temporary file beside the target (same directory, so the same filesystem), are
flushed and fsynced, and the temporary file replaces the target with `os.replace` (atomic on
POSIX); the directory is fsynced too, so the rename itself survives a power cut. A failure while
writing removes the temporary file and leaves the old target as it was.

    with atomic.replacing(path) as tmp:      # any writer that takes a path (np.save, pyarrow, ...)
      np.save(tmp, array)
    with atomic.open_for_write(path) as f:   # a file object ("w" or "wb")
      f.write(text)
    atomic.write_text(path, text); atomic.write_bytes(path, data); atomic.write_json(path, obj)

Temporary names start with "." and end in ".tmp": directory listings of data files skip them.
"""

import contextlib
import json
import os
import uuid


def fsync_dir(directory) -> None:
  """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(os.fspath(directory) or ".", os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some filesystems refuse fsync on a directory: the rename is still atomic
    pass
  finally:
    os.close(fd)


def _fsync_file(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def replacing(path):
  """Yield a temporary path beside `path`; when the block ends without an error, that file is
  fsynced and atomically replaces `path`. The caller writes the temporary path by any means."""
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    yield tmp
    _fsync_file(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  fsync_dir(directory)


@contextlib.contextmanager
def open_for_write(path, mode: str = "w", **open_kwargs):
  """A file object ("w", "wb") whose content replaces `path` atomically when the block ends."""
  if mode not in ("w", "wb", "wt"):
    raise ValueError(f"open_for_write writes whole files: mode 'w' or 'wb', not {mode!r}")
  if "b" not in mode:
    open_kwargs.setdefault("encoding", "utf-8")
  with replacing(path) as tmp, open(tmp, mode, **open_kwargs) as f:
    yield f


def write_bytes(path, data: bytes) -> None:
  with open_for_write(path, "wb") as f:
    f.write(data)


def write_text(path, text: str, encoding: str = "utf-8") -> None:
  with open_for_write(path, "w", encoding=encoding) as f:
    f.write(text)


def write_json(path, obj, **dump_kwargs) -> None:
  """`obj` as JSON (json.dumps's keyword arguments: indent=2, default=str, ...)."""
  write_text(path, json.dumps(obj, **dump_kwargs))
