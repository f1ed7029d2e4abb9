"""Which files a corpus source names: the installed Python source, a directory or a file.

`input_files(source)` is ("py", .py files) or ("rows", record files), in input order, and an error
naming the layouts read (`LAYOUTS`) when there is none; `inputs_fingerprint` keys a stage's
results by what those files are, not where they lie (data_gen/filtering/ingest.py reads them).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
from typing import Iterable, Iterator

from data_gen.filtering import qa

_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow")
# JSON files that describe a folder rather than hold records (datasets' save_to_disk, data_gen's).
_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "manifest.json",
                   "summary.json", "settings.json", "report.json"}
LAYOUTS = ("a directory of .py files; record files or a directory of them: *.jsonl[.gz], "
           "*.parquet (e.g. The Stack), a datasets.save_to_disk folder (data-*.arrow), a Stack "
           "Exchange Posts.xml; or 'default'/'stdlib'/'site-packages' for the installed Python")


def default_roots() -> dict[str, pathlib.Path]:
  """The embedded default corpus: this interpreter's standard library and site-packages."""
  paths = sysconfig.get_paths()
  return {"stdlib": pathlib.Path(paths["stdlib"]), "site-packages": pathlib.Path(paths["purelib"])}


def input_files(source: str) -> tuple[str, list[str]]:
  """("py", the .py files) or ("rows", the record files) of `source`, in input order; an error
  naming the layouts read when there is none."""
  kind, named = _listing(source)
  return kind, [f for f, _ in named]


def _listing(source: str) -> tuple[str, list[tuple[str, str]]]:
  """`input_files` with each file's name as the records carry it: a .py file's record id, a
  record file's path inside the source (its rows' assigned ids and `source` come from it)."""
  if source in ("default", "stdlib", "site-packages"):
    return "py", [(f, rid) for f, rid, _ in named_py_files(source)]
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"ingest: {source!r} does not exist; expected {LAYOUTS}")
  if path.is_dir():
    record_files = sorted(str(p) for p in path.rglob("*")
                          if p.is_file() and p.name not in _METADATA_FILES
                          and (p.name.endswith(_RECORD_SUFFIXES) or p.name.lower() == "posts.xml"))
    if record_files:
      return "rows", [(f, os.path.relpath(f, path)) for f in record_files]
    py = [(f, rid) for f, rid, _ in named_py_files(source)]
    if py:
      return "py", py
    raise ValueError(f"ingest: {source} holds no input files; expected {LAYOUTS}")
  if path.name.endswith(_RECORD_SUFFIXES) or qa.is_posts_xml(path.name):
    return "rows", [(str(path), path.name)]
  if path.suffix == ".py":
    return "py", [(f, rid) for f, rid, _ in named_py_files(source)]
  raise ValueError(f"ingest: cannot read {source!r}; expected {LAYOUTS}")


def inputs_fingerprint(source: str) -> str:
  """What `source`'s input files are, cheap at any size (no file is read, which at 35M files
  would be a second pass over the corpus): the layout and each file's name as the records carry
  it, size and modification time. Where the source lies is left out: a corpus moved or copied
  with its times (`mv`, `cp -p`, `rsync -a`) keeps its fingerprint and its finished stages; a file
  added, removed, renamed or rewritten changes it."""
  kind, named = _listing(source)
  digest = hashlib.sha256(kind.encode())
  for f, name in named:
    st = os.stat(f)
    digest.update(f"\n{name}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "replace"))
  return digest.hexdigest()[:16]


def _py_files(root: pathlib.Path, *, prefix: str,
              exclude_dirs: Iterable[str] = ()) -> Iterator[tuple[str, str, str]]:
  """(path, id, source) of the .py files under `root`, sorted."""
  exclude_dirs = set(exclude_dirs) | {"__pycache__"}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in exclude_dirs)
    for name in sorted(filenames):
      if name.endswith(".py"):
        full = os.path.join(dirpath, name)
        yield full, f"{prefix}:{os.path.relpath(full, root)}", prefix


def named_py_files(source: str) -> list[tuple[str, str, str]]:
  """(path, id, source) of every .py input of `source` (default corpus, directory or file)."""
  if source in ("default", "stdlib", "site-packages"):
    roots = default_roots()
    return [f for name in (["stdlib", "site-packages"] if source == "default" else [source])
            for f in _py_files(roots[name], prefix=name,
                               exclude_dirs={"site-packages", "dist-packages"}
                               if name == "stdlib" else set())]
  path = pathlib.Path(source)
  if path.is_dir():
    return list(_py_files(path, prefix=path.name))
  return [(str(path), f"{path.parent.name}:{path.name}", path.parent.name)]
