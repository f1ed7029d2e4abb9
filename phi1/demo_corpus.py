"""The CPU demo's corpus: the installed Python standard library, plus a tokenizer trained on it.

Real code no one here wrote, present on every machine that runs phi1. `build(cache_dir)` writes

    <cache_dir>/stdlib-<python version>-<settings hash>/
      train.jsonl, eval.jsonl   one record per .py file: {"id", "text", "source"} (DESIGN.md §3)
      exercises_train.jsonl, exercises_eval.jsonl
                                CodeExercises-shaped finetuning records (paper §2.2: a function
                                signature + docstring to complete): every top-level documented
                                function of those files, {"id", "prompt", "completion", "text",
                                "source"} with prompt = signature + docstring, text = both
      tokenizer.model           SentencePiece BPE, whitespace-exact (phi1.tokenizer)
      manifest.json             counts and settings; written last, so its presence means complete

or reuses that directory when it exists. Everything is deterministic: files in sorted order, the
eval split by a hash of each file's path, the tokenizer trained on a fixed hash-ordered sample.

    python -m phi1.demo_corpus ~/.cache/phi1     # prints the paths
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time

from phi1 import tokenizer as tk
from phi1.data import records

_FORMAT_VERSION = 2
# Exercises longer than this (prompt + completion, characters) are left out: the demo's sequences
# are short, and a 300-line function is not an exercise.
_MAX_EXERCISE_CHARS = 3000
# Directories of the standard library that hold tests, not library code (and odd encodings).
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
  directory: str
  train_path: str
  eval_path: str
  tokenizer_path: str
  exercises_train_path: str
  exercises_eval_path: str
  manifest: dict


def _stdlib_files(stdlib: str, include_tests: bool) -> list[str]:
  files = []
  for path in records.python_files(stdlib):
    parts = os.path.relpath(path, stdlib).split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
      continue  # third-party code installed into this interpreter, not the standard library
    if not include_tests and _TEST_DIRS.intersection(parts[:-1]):
      continue
    files.append(path)
  return files


def _hash_unit(text: str) -> float:
  """A fixed pseudo-random number in [0, 1) per string, stable across runs and machines."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def exercises_from_source(text: str) -> list[tuple[str, str, str]]:
  """(function name, prompt, completion) for each top-level, undecorated, documented function.

  prompt = the `def` line(s) through the end of the docstring, completion = the rest of the body,
  both exact slices of the file, so prompt + completion is the function's source.
  """
  try:
    tree = ast.parse(text)
  except (SyntaxError, ValueError):
    return []
  lines = text.splitlines(keepends=True)
  out = []
  for node in tree.body:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
      continue
    if ast.get_docstring(node) is None or len(node.body) < 2:
      continue
    doc = node.body[0]
    doc_end = doc.end_lineno
    if lines[doc_end - 1].encode()[doc.end_col_offset:].strip():  # offsets count UTF-8 bytes
      continue  # code after the docstring on its closing line: no clean cut
    prompt = "".join(lines[node.lineno - 1:doc_end])
    completion = "".join(lines[doc_end:node.end_lineno])
    if completion.strip() and len(prompt) + len(completion) <= _MAX_EXERCISE_CHARS:
      out.append((node.name, prompt, completion))
  return out


def _settings(vocab_size, eval_fraction, include_tests, tokenizer_sample_chars) -> dict:
  return {"format": _FORMAT_VERSION, "python": sys.version,
          "stdlib": sysconfig.get_paths()["stdlib"], "vocab_size": vocab_size,
          "eval_fraction": eval_fraction, "include_tests": include_tests,
          "tokenizer_sample_chars": tokenizer_sample_chars}


def locate(cache_dir: str | os.PathLike, *, vocab_size: int = 4096, eval_fraction: float = 0.02,
           include_tests: bool = False, tokenizer_sample_chars: int = 4_000_000) -> DemoCorpus:
  """Where `build` with these settings puts (or finds) the corpus; builds nothing."""
  settings = _settings(vocab_size, eval_fraction, include_tests, tokenizer_sample_chars)
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  version = ".".join(map(str, sys.version_info[:3]))
  directory = os.path.join(os.path.abspath(os.fspath(cache_dir)), f"stdlib-{version}-{key}")
  return DemoCorpus(
      directory=directory, train_path=os.path.join(directory, "train.jsonl"),
      eval_path=os.path.join(directory, "eval.jsonl"),
      tokenizer_path=os.path.join(directory, "tokenizer.model"),
      exercises_train_path=os.path.join(directory, "exercises_train.jsonl"),
      exercises_eval_path=os.path.join(directory, "exercises_eval.jsonl"), manifest={})


def build(cache_dir: str | os.PathLike, *, vocab_size: int = 4096, eval_fraction: float = 0.02,
          include_tests: bool = False, tokenizer_sample_chars: int = 4_000_000,
          log=print) -> DemoCorpus:
  """Builds (or reuses) the corpus and tokenizer; see the module docstring."""
  corpus = locate(cache_dir, vocab_size=vocab_size, eval_fraction=eval_fraction,
                  include_tests=include_tests, tokenizer_sample_chars=tokenizer_sample_chars)
  settings = _settings(vocab_size, eval_fraction, include_tests, tokenizer_sample_chars)
  directory, stdlib = corpus.directory, settings["stdlib"]
  version = ".".join(map(str, sys.version_info[:3]))
  manifest_path = os.path.join(directory, "manifest.json")
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      return dataclasses.replace(corpus, manifest=json.load(f))

  start = time.perf_counter()
  tmp = f"{directory}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)  # makes cache_dir too
  stats = records.SourceStats(path=stdlib)
  source = f"python-stdlib-{version}"
  train, held_out = [], []
  for path in _stdlib_files(stdlib, include_tests):
    rel = os.path.relpath(path, stdlib).replace(os.sep, "/")
    stats.records += 1
    with open(path, "rb") as f:
      text = records.decode_source(f.read())
    if text is None:
      stats.undecodable += 1
      continue
    if not text.strip():
      stats.empty_text += 1  # e.g. empty __init__.py files
      continue
    stats.documents += 1
    record = {"id": f"stdlib/{rel}", "text": text, "source": source}
    (held_out if _hash_unit(rel) < eval_fraction else train).append(record)
  exercises = {}
  for name, split in (("exercises_train.jsonl", train), ("exercises_eval.jsonl", held_out)):
    exercises[name] = [
        {"id": f"{r['id']}::{fn}", "prompt": prompt, "completion": completion,
         "text": prompt + completion, "source": source}
        for r in split for fn, prompt, completion in exercises_from_source(r["text"])]
  for name, split in (("train.jsonl", train), ("eval.jsonl", held_out), *exercises.items()):
    with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
      for record in split:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")

  sample, chars = [], 0
  for record in sorted(train, key=lambda r: _hash_unit("tokenizer:" + r["id"])):
    if chars >= tokenizer_sample_chars:
      break
    sample.append(record["text"])
    chars += len(record["text"])
  tok = tk.train_sentencepiece(sample, os.path.join(tmp, "tokenizer.model"), vocab_size=vocab_size)

  manifest = {"settings": settings, "source": source, "train_documents": len(train),
              "eval_documents": len(held_out),
              "train_exercises": len(exercises["exercises_train.jsonl"]),
              "eval_exercises": len(exercises["exercises_eval.jsonl"]),
              "train_chars": sum(len(r["text"]) for r in train),
              "eval_chars": sum(len(r["text"]) for r in held_out),
              "tokenizer_sample_chars": chars, "tokenizer_fingerprint": tok.fingerprint,
              "skipped": {"empty": stats.empty_text, "undecodable": stats.undecodable},
              "build_seconds": round(time.perf_counter() - start, 2)}
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  try:
    os.rename(tmp, directory)
  except OSError:  # another process finished first: use its copy (identical by construction)
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isfile(manifest_path):
      raise
  log(f"demo corpus: {len(train)} train / {len(held_out)} eval files of the Python {version} "
      f"standard library, {manifest['train_exercises']} / {manifest['eval_exercises']} "
      f"exercises, tokenizer vocab {vocab_size}, in {manifest['build_seconds']}s -> {directory}")
  return build(cache_dir, vocab_size=vocab_size, eval_fraction=eval_fraction,
               include_tests=include_tests, tokenizer_sample_chars=tokenizer_sample_chars,
               log=log)


def build_if_named(data_config, cache_dir=None):
  """Build the corpus of `cache_dir` (default settings) if a file the run's `data_config` reads
  (a source, an eval source, the tokenizer) lies in it and is missing.

  Experiment files name the corpus's files through `locate`, which builds nothing (their
  get_config stays pure, also for `--dry-run`); the commands that launch runs (`phi1 train`, the
  sweep, the demo) call this before training, so the run's identity fingerprints built files.
  The trainer itself knows nothing of this corpus."""
  cache_dir = cache_dir or default_cache_dir()
  sources = [*data_config.get("sources", []), *data_config.get("eval_sources", [])]
  paths = [s["path"] if isinstance(s, dict) or hasattr(s, "keys") else s for s in sources]
  paths.append(data_config.get("tokenizer", ""))
  directory = locate(cache_dir).directory + os.sep
  named = [p for p in paths if p and os.path.abspath(os.fspath(p)).startswith(directory)]
  if named and not all(os.path.exists(p) for p in named):
    build(cache_dir)


def default_cache_dir() -> str:
  """$PHI1_CACHE, else ~/.cache/phi1: the demo corpus, tokenized copies and compiled programs."""
  return os.environ.get("PHI1_CACHE", os.path.expanduser("~/.cache/phi1"))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m phi1.demo_corpus CACHE_DIR", file=sys.stderr)
    return 2
  corpus = build(argv[0])
  print(json.dumps({"train": corpus.train_path, "eval": corpus.eval_path,
                    "tokenizer": corpus.tokenizer_path,
                    "exercises_train": corpus.exercises_train_path,
                    "exercises_eval": corpus.exercises_eval_path}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
