"""Content fingerprints: what a result was made from, so it is reused only while that is unchanged.

A fingerprint is 16 hex digits of a sha256 over content, never over a path: a copied export keeps
its fingerprint, a retrained one at the same path gets another. Each is cheap to compute:
  file         up to 4 MiB: every byte; larger: its size and three 1 MiB windows (start, middle,
               end), which retrained weights or a topped-up corpus change (an edit of equal size
               between the windows is not seen: data_gen outputs are covered by their shards'
               sha256, and modification times are left out so a copied corpus still matches)
  directory    its files' relative names and file fingerprints
  data source  a data_gen output directory: the shard list of its manifest.json (names, record
               counts, sizes and the sha256 each shard's completion marker holds); a `phi1
               pretokenize` output, a folder of .py files or a file: as a directory / file
  weights      an export (phi1_config.json + the orbax params), an HF directory, or one training
               checkpoint step (WORKDIR/checkpoints/STEP): as a directory
A path that does not exist has the fingerprint "missing".
"""

from __future__ import annotations

import hashlib
import json
import os

MISSING = "missing"
_WHOLE_FILE = 4 << 20
_WINDOW = 1 << 20


def _digest(parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def of_file(path: str) -> str:
  size = os.path.getsize(path)
  h = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    if size <= _WHOLE_FILE:
      h.update(f.read())
    else:
      for offset in (0, (size - _WINDOW) // 2, size - _WINDOW):
        f.seek(offset)
        h.update(f.read(_WINDOW))
  return h.hexdigest()[:16]


def of_tree(path: str, suffix: str = "") -> str:
  """Every file under `path` (those ending in `suffix`), by relative name and content."""
  parts = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      if name.endswith(suffix):
        full = os.path.join(root, name)
        parts.append((os.path.relpath(full, path), of_file(full)))
  return _digest(parts)


def of_path(path: str) -> str:
  if not os.path.exists(path):
    return MISSING
  return of_tree(path) if os.path.isdir(path) else of_file(path)


def of_data_source(path: str) -> str:
  """A training source as `phi1.data` reads it (phi1/data/records.py)."""
  manifest = os.path.join(path, "manifest.json")
  if os.path.isfile(manifest):  # data_gen output: its markers already hold every shard's sha256
    try:
      with open(manifest) as f:
        shards = json.load(f)["shards"]
      return _digest([[s.get("file"), s.get("records"), s.get("bytes"), s.get("sha256")]
                      for s in shards])
    except (ValueError, KeyError, TypeError):
      return of_file(manifest)  # unreadable: the pipeline says why when it reads it
  if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "metadata.json")):
    return of_tree(path, suffix=".py")
  return of_path(path)


def weights_path(path: str, step: int | None = None) -> str:
  """The directory holding the weights `phi1 eval --checkpoint PATH [--step N]` reads."""
  if step is not None:
    return os.path.join(path, "checkpoints", str(step))
  if not os.path.isfile(os.path.join(path, "phi1_config.json")) and os.path.isdir(
      os.path.join(path, "export")):
    return os.path.join(path, "export")  # a training workdir stands for its export
  return path


def of_weights(path: str, step: int | None = None) -> str:
  """The files that hold the weights (an export's config and params, an HF directory's config and
  safetensors), so results written beside them do not change it."""
  path = weights_path(path, step)
  if os.path.isfile(os.path.join(path, "phi1_config.json")):
    return _digest([of_file(os.path.join(path, "phi1_config.json")),
                    of_path(os.path.join(path, "params"))])
  if step is None and os.path.isfile(os.path.join(path, "config.json")):
    return _digest([(name, of_file(os.path.join(path, name))) for name in sorted(os.listdir(path))
                    if name == "config.json" or name.endswith((".safetensors", ".index.json"))])
  return of_path(path)


def _source_path(source) -> str:
  return source if isinstance(source, (str, os.PathLike)) else source["path"]


def of_data(data: dict) -> dict[str, str]:
  """{what: fingerprint} for everything a `data` config block reads: each training source (by its
  name, as phi1/data/pipeline.py names it), each eval source and the tokenizer."""
  out = {}
  for i, source in enumerate(data.get("sources") or []):
    name = (None if isinstance(source, (str, os.PathLike)) else source.get("name")) or f"source{i}"
    out[f"data source '{name}' ({_source_path(source)})"] = of_data_source(_source_path(source))
  for source in data.get("eval_sources") or []:
    out[f"eval source ({_source_path(source)})"] = of_data_source(_source_path(source))
  if data.get("tokenizer"):
    out[f"tokenizer ({data['tokenizer']})"] = of_path(data["tokenizer"])
  return out


def changed(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple]:
  """{what: (old, new)} for the inputs whose fingerprint differs (present on both sides, or
  dropped / added)."""
  return {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())
          if before.get(k) != after.get(k)}


def eval_staleness(summary: dict) -> str:
  """"" when a `phi1 eval` summary.json scored the weights that are now at the path it names (its
  protocol.generator records path, step and the weights' fingerprint); else why it cannot stand
  beside those weights."""
  generator = (summary.get("protocol") or {}).get("generator") or {}
  if generator.get("kind") == "generations":  # `--samples generations.jsonl`: as it was made
    made = generator.get("settings") or {}
    generator = {"kind": made.get("kind"), "path": made.get("checkpoint"), "step": made.get("step"),
                 **({"weights": made["weights"]} if made.get("weights") else {})}
  if generator.get("kind") != "checkpoint" or "weights" not in generator:
    return "unverified: the summary names no weights fingerprint (rerun phi1 eval --checkpoint)"
  now = of_weights(generator["path"], generator.get("step"))
  if now != generator["weights"]:
    return (f"stale: it scored weights {generator['weights']}; {generator['path']} now holds "
            f"{now}")
  return ""
