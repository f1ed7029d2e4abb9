"""The data columns of the CPU Figure 2.1 (experiments/figure21_cpu.py), made from the demo corpus.

Paper §2 / Figure 2.1 compares three data columns at equal compute: The Stack+ as it is,
CodeTextbook (code filtered for educational value + synthetic textbooks) and CodeTextbook followed
by a CodeExercises finetune. Without an LLM, on the Python standard library (phi1/demo_corpus.py):
  raw         every standard-library file (train.jsonl): The Stack+'s stand-in.
  filtered    files whose functions are mostly documented (>= FILTER_DOCUMENTED_SHARE of their
              defs have a docstring, at least MIN_DEFS defs): a rule in place of the paper's
              GPT-4-labelled educational-value classifier (§2.1), same direction (self-explaining
              code kept).
  textbook    documented, nearly self-contained functions (the body reads at most MAX_FREE_NAMES
              names that are not parameters, locals, builtins or imported inside it), whole:
              "clear, self-contained, instructive" (§2.2), the closest thing to textbook code the
              library holds (strictly self-contained ones are too few: 145, 53K characters).
  exercises   documented functions as signature + docstring -> body (CodeExercises' format), from
              the other half of the functions (split by a hash of the id, so no function is both),
              decontaminated against HumanEval by data_gen's pipeline (n-gram and AST match,
              paper §5) before use: records flagged at tau `DECONTAMINATION_TAU` are dropped.
Everything is cached under the demo corpus's cache directory, keyed by the corpus and these
settings; `build()` returns the paths and counts.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import json
import os

FILTER_DOCUMENTED_SHARE = 0.6
MIN_DEFS = 3
MAX_FREE_NAMES = 3
DECONTAMINATION_TAU = "0.9"
_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Figure21Data:
  raw: str
  filtered: str
  textbook: str
  exercises: str
  eval_files: str  # held-out standard-library files: the training-distribution loss
  decontamination_report: str
  tokenizer: str
  counts: dict


def documented_share(text: str) -> tuple[float, int]:
  """(share of function definitions with a docstring, number of definitions) of a source file."""
  try:
    tree = ast.parse(text)
  except (SyntaxError, ValueError):
    return 0.0, 0
  defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  if not defs:
    return 0.0, 0
  return sum(ast.get_docstring(d) is not None for d in defs) / len(defs), len(defs)


def free_names(function_source: str) -> set[str] | None:
  """Names the function reads that are not bound inside it (parameters, locals, imports) nor
  builtins; None when it does not parse."""
  try:
    tree = ast.parse(function_source)
  except (SyntaxError, ValueError):
    return None
  bound = set(dir(builtins))
  loaded = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.arg):
      bound.add(node.arg)
    elif isinstance(node, ast.Name):
      (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      bound.update((a.asname or a.name).split(".")[0] for a in node.names)
  return loaded - bound


def _nearly_self_contained(function_source: str) -> bool:
  names = free_names(function_source)
  return names is not None and len(names) <= MAX_FREE_NAMES


def _half(record_id: str) -> str:
  digest = hashlib.sha256(record_id.encode()).digest()[0]
  return "textbook" if digest % 2 == 0 else "exercises"


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, rows) -> int:
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      n += 1
  return n


def build(corpus=None, log=print) -> Figure21Data:
  """The four sources (built once per corpus, then reused)."""
  if corpus is None:
    from experiments import recipes
    corpus = recipes.build_demo_corpus()
  key = hashlib.sha256(json.dumps([_VERSION, corpus.directory, FILTER_DOCUMENTED_SHARE, MIN_DEFS,
                                   MAX_FREE_NAMES, DECONTAMINATION_TAU]).encode()).hexdigest()[:10]
  directory = os.path.join(os.path.dirname(corpus.directory), f"figure21-{key}")
  paths = {name: os.path.join(directory, f"{name}.jsonl")
           for name in ("filtered", "textbook", "exercises")}
  report_path = os.path.join(directory, "decontamination", "report.json")
  manifest = os.path.join(directory, "manifest.json")
  if not os.path.isfile(manifest):
    counts = _make(corpus, directory, paths, report_path)
    with open(manifest, "w") as f:
      json.dump(counts, f, indent=2)
    log(f"figure21 data: {counts} -> {directory}")
  with open(manifest) as f:
    counts = json.load(f)
  return Figure21Data(raw=corpus.train_path, eval_files=corpus.eval_path,
                      decontamination_report=report_path, tokenizer=corpus.tokenizer_path,
                      counts=counts, **paths)


def _make(corpus, directory: str, paths: dict, report_path: str) -> dict:
  from data_gen import decontaminate, decontaminate_report
  os.makedirs(os.path.dirname(report_path), exist_ok=True)
  files = _read_jsonl(corpus.train_path)
  kept = []
  for record in files:
    share, n_defs = documented_share(record["text"])
    if n_defs >= MIN_DEFS and share >= FILTER_DOCUMENTED_SHARE:
      kept.append(record)
  functions = _read_jsonl(corpus.exercises_train_path)
  textbook = [dict(id=f["id"], text=f["text"], source="textbook") for f in functions
              if _half(f["id"]) == "textbook" and _nearly_self_contained(f["text"])]
  exercises = [f for f in functions if _half(f["id"]) == "exercises"]
  # Decontaminate the exercises against HumanEval before any training sees them (paper §5).
  problems = decontaminate.load_problems(["humaneval"])
  config = decontaminate.Config(workers=1)
  result = decontaminate.decontaminate(exercises, problems, config)
  report = decontaminate_report.build_report(result, problems, config, embedder=None)
  with open(report_path, "w") as f:
    json.dump(report, f, indent=1)
  removed = set(report["taus"][DECONTAMINATION_TAU]["removed_ids"])
  clean = [dict(id=e["id"], prompt=e["prompt"], completion=e["completion"], source="exercises")
           for e in exercises if e["id"] not in removed]
  return {"raw_files": len(files), "filtered_files": _write_jsonl(paths["filtered"], kept),
          "filtered_chars": sum(len(r["text"]) for r in kept),
          "textbook_functions": _write_jsonl(paths["textbook"], textbook),
          "textbook_chars": sum(len(r["text"]) for r in textbook),
          "exercises_before_decontamination": len(exercises),
          "exercises_removed": len(removed),
          "exercises": _write_jsonl(paths["exercises"], clean),
          "humaneval_similar": report["taus"][DECONTAMINATION_TAU]["split"]["humaneval"]["n_similar"]}
