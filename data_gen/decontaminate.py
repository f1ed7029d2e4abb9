"""Decontaminate a corpus against HumanEval (paper §5, Table 3): embedding distance + AST match rate.

phi-1 §5 checks its training data three ways; we compute all three per (record, benchmark problem):
- n-gram: distinct word 13-grams (lower-cased `\\w+` tokens) shared with the problem's docstring /
  statement or its solution code. The paper used 13-gram overlap as a diagnostic (4 hits, all false
  positives), not to prune: it is reported, and prunes only with `--remove-by ...,ngram`.
- embedding: L2 distance between the L2-normalised embeddings of the record and of the problem's
  prompt + solution, with the paper's CodeGen-Mono-350M when `--embedder codegen:DIR` names a
  `CodeGenForCausalLM.save_pretrained` directory (mean-pooled final hidden states, see
  data_gen/filtering/embed.py). The paper fixes a threshold but does not give it (0.16 is the
  distance of one example pair it shows). Ours is calibrated per embedder unless given
  (`--embed-threshold`): the distance under which `calibration_fpr` (1%) of a reference set of
  known-clean functions (the standard library's) fall from their nearest problem. The command's
  default embedder is that model (data_gen/decontaminate_cli.py); off, and reported as off, only
  with `--embedder none`.
- AST match rate tau (data_gen/ast_match.py documents the exact definition): the record's best
  unit's tau against the problem, kept when it reaches the loosest tau of {0.95, 0.9, 0.85, 0.8}.

Pruning ("we fix a threshold for the embedding distance, and we test several match rate tau"): a
record is removed at tau when its embedding distance to some problem is under the fixed threshold
OR its AST match rate reaches tau (`combine="union"`, the default; docs/fidelity.md says why), or,
with `combine="embedding_then_ast"`, when one pair passes both. For each tau the report gives the
removed count beside the paper's (42.5K at tau 0.95 to 354K at 0.8, of 879.5K exercises), and splits
each benchmark into "similar" problems (some removed record matched them) and "non-similar" ones,
for Table 3's pass@1 on both parts; a pruned copy of the corpus is written per tau.

This module is the method (one scan per engine task: `decontaminate`); the report is
data_gen/decontaminate_report.py, the engine steps data_gen/decontaminate_steps.py, the command
(`python -m data_gen decontaminate`) data_gen/decontaminate_cli.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from data_gen import ast_match
from data_gen.filtering import ingest, inputs

TAUS = (0.95, 0.9, 0.85, 0.8)
NGRAM_N = 13
DEFAULT_BENCHMARKS = ("humaneval",)  # Table 3 prunes against HumanEval
MEASURES = ("ngram", "embedding", "ast")
DEFAULT_REMOVE_BY = ("embedding", "ast")  # §5: n-grams were a diagnostic, not a pruning rule
COMBINE = ("union", "embedding_then_ast")
AST_PAIR_COUNTS = ("all", "edit_distances")  # stats["ast_pairs"] keys (see ast_match.AstIndex)
CALIBRATION_FPR = 0.01
CALIBRATION_SIZE = 1000
_WORD = re.compile(r"\w+")
_FENCED = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


# ----------------------------------------------------------------------------------------- problems
@dataclasses.dataclass
class Problem:
  benchmark: str
  task_id: str
  prose: str      # docstring / statement
  code: str       # full solution as a model would write it
  ast_unit: ast_match.Unit | None = None


def load_problems(names: Sequence[str], *, humaneval_path: str | None = None,
                  mbpp_path: str | None = None, paths: dict[str, str] | None = None
                  ) -> list[Problem]:
  """The problems of the named benchmarks (phi1/evals/benchmarks.py's registry: HumanEval's 164,
  MBPP's 974 rows of every split, since training data must not contain the few-shot or
  validation problems either). Read with the evaluation loaders, so decontamination and
  evaluation see the same problems. `paths`: a benchmark's file other than its default."""
  from phi1.evals import benchmarks  # JAX-free modules
  paths = {"humaneval": humaneval_path, "mbpp": mbpp_path, **(paths or {})}
  known = benchmarks.names(decontamination=True)
  problems = []
  for name in names:
    if name not in known:
      raise ValueError(f"unknown benchmark {name!r}; choose from {known}")
    benchmark = benchmarks.get(name)
    path = paths.get(name) or benchmark.default_path()
    _require(path, f"--{name}-path")
    problems += [Problem(name, task_id, prose, code)
                 for task_id, prose, code in benchmark.problems(path)]
  for p in problems:
    p.ast_unit = ast_match.benchmark_unit(p.code)
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
def record_units(text: str) -> list[ast_match.Unit] | None:
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
  ast_pairs: tuple[int, int]  # (all distinct unit x problem pairs, edit distances computed)


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
      tau = ast_match.best_tau(units, problems[i].ast_unit)
      if tau is not None:
        ast[i] = tau
  after = ast_index.pair_counts()
  return RecordScan(ngram, ast, units is not None, tuple(b - a for a, b in zip(before, after)))


# ------------------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class Config:
  taus: tuple[float, ...] = TAUS
  ngram_n: int = NGRAM_N
  embed_threshold: float | None = None  # None: calibrated (calibrate_embed_threshold)
  calibration_fpr: float = CALIBRATION_FPR
  calibration_size: int = CALIBRATION_SIZE
  remove_by: tuple[str, ...] = DEFAULT_REMOVE_BY
  combine: str = "union"
  workers: int = 1          # processes per call; the engine's tasks are the scale-out
  chunk: int = 256

  def __post_init__(self):
    if set(self.remove_by) - set(MEASURES):
      raise ValueError(f"remove_by takes {MEASURES}; got {sorted(set(self.remove_by) - set(MEASURES))}")
    if self.combine not in COMBINE:
      raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
    if not all(0.0 < t <= 1.0 for t in self.taus):
      raise ValueError(f"taus must be in (0, 1], got {self.taus}")


def embed_threshold(config: Config, embedder, problem_vectors_PD: np.ndarray | None) -> float | None:
  """The fixed embedding threshold: the configured one, or calibrated for `embedder` (None: the
  embedding measure is off). Deterministic, so every engine task computes the same value."""
  if embedder is None:
    return None
  if config.embed_threshold is not None:
    return config.embed_threshold
  return calibrate_embed_threshold(embedder, problem_vectors_PD,
                                   reference_functions(config.calibration_size),
                                   config.calibration_fpr)


def calibrate_embed_threshold(embedder, problem_vectors_PD: np.ndarray,
                              reference_texts: Sequence[str], fpr: float = CALIBRATION_FPR) -> float:
  """The distance under which a fraction `fpr` of known-clean reference texts fall from their
  nearest problem: the paper fixes one threshold per embedder but does not publish it."""
  if not reference_texts:
    raise ValueError("no reference texts to calibrate the embedding threshold on")
  x_ND = embedder.embed(list(reference_texts))
  nearest_N = np.sqrt(np.maximum(2.0 - 2.0 * (x_ND @ problem_vectors_PD.T).max(axis=1), 0.0))
  return float(np.quantile(nearest_N, fpr))


@functools.lru_cache(maxsize=4)
def reference_functions(n: int = CALIBRATION_SIZE, seed: int = 0) -> tuple[str, ...]:
  """Source of `n` functions sampled from this machine's standard library: code that is not a
  benchmark's, of the same shape as an exercise (one function with its docstring)."""
  import ast
  import random
  files = sorted(inputs.default_roots()["stdlib"].rglob("*.py"))
  random.Random(seed).shuffle(files)
  out: list[str] = []
  for path in files:
    try:
      text = path.read_text("utf-8")
    except (UnicodeDecodeError, OSError):
      continue
    tree = ast_match.parse(text)
    for node in ast.walk(tree) if tree is not None else ():
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        segment = ast.get_source_segment(text, node)
        if segment and 50 <= len(segment) <= 4000:
          out.append(segment)
          break  # one per file: spread over the library
    if len(out) >= n:
      break
  return tuple(out)


def decontaminate(records: Iterable[dict], problems: Sequence[Problem], config: Config = Config(),
                  embedder=None, progress: bool = False) -> dict:
  """Scans `records`; returns {"pairs", "stats", "embed_threshold"} (one engine task calls this on its
  share of the corpus; `merge` joins the tasks' results)."""
  tau_min = min(config.taus)
  t0 = time.time()
  pairs, stats, ast_pairs = [], _zero_stats(), np.zeros(2, np.int64)
  ngram_index = NgramIndex(problems, config.ngram_n)
  ast_index = ast_match.AstIndex([p.ast_unit for p in problems])
  problem_vectors = embedder.embed([p.code for p in problems]) if embedder is not None else None
  threshold = embed_threshold(config, embedder, problem_vectors)
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
        close = ({int(i) for i in np.nonzero(distances[k] <= threshold)[0]}
                 if distances is not None else set())
        flagged = set(scan.ngram) | set(scan.ast) | close
        if not flagged:
          continue
        units = record_units(r["text"]) if close - set(scan.ast) else None
        for i in sorted(flagged):
          tau = scan.ast.get(i)
          if tau is None and units:
            tau = ast_match.best_tau(units, problems[i].ast_unit)
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
  stats["ast_pairs"] = dict(zip(AST_PAIR_COUNTS, map(int, ast_pairs)))
  return {"pairs": pairs, "stats": stats, "embed_threshold": threshold}


def _zero_stats() -> dict:
  return dict(records=0, bytes=0, unparsable=0, seconds_embedding=0.0)


def removed_at(pairs: Sequence[dict], tau: float, config: Config,
               embed_threshold: float | None) -> list[dict]:
  """The flagged pairs that remove their record at `tau`: under `config.combine="union"` a pair
  any measure in `config.remove_by` flags; under "embedding_then_ast" a pair whose embedding
  distance is under the threshold AND whose AST match rate reaches tau (n-grams, if asked, still
  remove on their own). `embed_threshold` None: the embedding measure is off."""
  out = []
  for p in pairs:
    close = (embed_threshold is not None and p["embedding_distance"] is not None
             and p["embedding_distance"] <= embed_threshold)
    ast_hit = p["ast_match"] is not None and p["ast_match"] >= tau
    by_ngram = "ngram" in config.remove_by and p["ngram"] > 0
    if config.combine == "embedding_then_ast":
      hit = close and ast_hit
    else:
      hit = ("embedding" in config.remove_by and close) or ("ast" in config.remove_by and ast_hit)
    if hit or by_ngram:
      out.append(p)
  return out


class _NoBar:
  def update(self, n): pass
  def close(self): pass


def _progress(enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm import tqdm
  return tqdm(desc="decontaminate", unit="rec", file=sys.stderr)
