"""Diversity report for a generated corpus: `python -m data_gen report DIR [--threshold 0.7]`.

Measures what phi-1's recipe is about (diverse, non-repetitive synthetic data):
  near_duplicates  MinHash (word 5-grams, datasketch LSH): share of records whose estimated Jaccard
                   with an earlier record reaches the threshold (what a dedup pass would remove);
  distinct_ngrams  distinct-n (Li et al. 2016): distinct word n-grams / all n-grams, n = 1..4;
  function_names   distinct names defined (`def name`) across records;
  coverage         topics (and textbook subtopics and topic-tree leaves) seen of those the table
                   and tree hold; exercises: distinct requested function names;
  cells            distribution over constraint cells (coverage of the table, entropy, top cells);
  openings         the most frequent opening phrases (first five words);
  lengths          words and completion tokens per record: percentiles and histograms;
  tokens           usage-reported and whitespace token counts, cost;
  validity         records kept by --keep-invalid, by reason.
DIR may hold the rank directories of a `--shard I/W` run (all are read). Writes DIR/report.json
and DIR/report.png (topics, cell coverage, cell sizes, openings, lengths), prints the JSON, and
lists `flags` for anything that looks wrong (e.g. a near-duplicate rate above 2%).
"""

import argparse
import collections
import json
import math
import os
import re
import sys

import numpy as np
from datasketch import MinHash, MinHashLSH

from data_gen.shards import read_records

_WORD = re.compile(r"\w+")
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)", re.M)
CELL_KEYS = {"textbooks": ("topic", "subtopic", "leaf", "audience", "style"),
             "exercises": ("topic", "difficulty", "function_name")}


def _minhash(text: str, ngram: int, num_perm: int) -> MinHash:
  words = _WORD.findall(text.lower())
  grams = {" ".join(words[i:i + ngram]).encode() for i in range(max(1, len(words) - ngram + 1))}
  m = MinHash(num_perm=num_perm, seed=1)
  m.update_batch(list(grams))
  return m


def near_duplicates(records: list[dict], threshold: float = 0.7, ngram: int = 5,
                    num_perm: int = 128) -> dict:
  """Each record whose estimated Jaccard with some earlier record is >= threshold is a duplicate.
  LSH only proposes candidates, tuned well below the threshold so that pairs just above it are
  rarely missed; every candidate is then checked against the threshold on the full signature."""
  lsh = MinHashLSH(threshold=max(0.05, threshold - 0.25), num_perm=num_perm)
  kept: dict[str, MinHash] = {}
  duplicates = []
  for r in records:
    m = _minhash(r["text"], ngram, num_perm)
    best = max(((m.jaccard(kept[c]), c) for c in lsh.query(m)), default=(0.0, None))
    if best[0] >= threshold:
      duplicates.append((r["id"], best[1], round(best[0], 3)))
    else:
      lsh.insert(r["id"], m)
      kept[r["id"]] = m
  n = max(len(records), 1)
  return {"rate": len(duplicates) / n, "count": len(duplicates), "threshold": threshold,
          "ngram": ngram, "num_perm": num_perm, "ids": [d[0] for d in duplicates],
          "examples": duplicates[:10]}


def distinct_ngrams(records: list[dict], max_n: int = 4) -> dict:
  """distinct-n: distinct word n-grams over all n-grams of the corpus (1.0: nothing repeats)."""
  out = {}
  tokenized = [_WORD.findall(r["text"].lower()) for r in records]
  for n in range(1, max_n + 1):
    seen, total = set(), 0
    for words in tokenized:
      grams = [hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)]
      total += len(grams)
      seen.update(grams)
    out[f"distinct_{n}"] = len(seen) / total if total else 0.0
  return out


def _percentiles(values: np.ndarray) -> dict:
  if not len(values):
    return {}
  p = np.percentile(values, [10, 50, 90])
  return {"min": int(values.min()), "p10": float(p[0]), "p50": float(p[1]), "p90": float(p[2]),
          "max": int(values.max()), "mean": float(values.mean())}


def _opening(record: dict) -> str:
  """First five words of the prose: an exercise's docstring (its code always opens with `def`)."""
  text = record["text"]
  if "prompt" in record:
    docstring = re.search(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\'|$)', record["prompt"], re.S)
    text = docstring.group(1) if docstring else text
  return " ".join(_WORD.findall(text)[:5]).lower()


def _cells(records: list[dict], kind: str) -> list[tuple]:
  keys = CELL_KEYS.get(kind) or tuple(sorted((records[0].get("constraints") or {}).keys()))
  return [tuple((r.get("constraints") or {}).get(k) for k in keys) for r in records]


def _sources(out_dir: str, kind: str, manifest: dict) -> tuple[dict | None, dict | None]:
  """The packaged table and the topic tree this corpus was generated from, when they are at hand
  and unchanged (their hashes match the manifest's run 0)."""
  from data_gen.provenance import recorded_runs
  from data_gen.tables import load_table
  runs = recorded_runs(manifest)
  recorded = runs[0]["settings"] if runs else {}
  try:
    table = load_table(kind)
  except FileNotFoundError:
    return None, None
  if recorded.get("table_sha256") not in (None, table["_sha256"]):
    return None, None
  tree = None
  path = os.path.join(out_dir, "topic_tree.yaml")
  if kind == "textbooks" and os.path.exists(path):
    from data_gen.topic_tree import load_tree
    try:
      tree = load_tree(path, table)
    except ValueError:
      tree = None
  return table, tree


def _table_cells(kind: str, table: dict | None, tree: dict | None) -> int | None:
  if table is None or (kind == "textbooks" and tree is None):
    return None
  if kind == "textbooks":
    from data_gen.textbooks import textbook_cells
    return textbook_cells(table, tree)
  from data_gen.exercises import exercise_cells
  return exercise_cells(table)


def _coverage(kind: str, records: list[dict], table: dict | None, tree: dict | None) -> dict:
  constraints = [r.get("constraints") or {} for r in records]
  seen_topics = {c.get("topic") for c in constraints} - {None}
  out = {"topics_seen": len(seen_topics)}
  if table is not None:
    out["topics_in_table"] = len(table["topics"])
    out["topics_missing"] = sorted({t["name"] for t in table["topics"]} - seen_topics)[:20]
  if kind == "textbooks":
    out["subtopics_seen"] = len({(c.get("topic"), c.get("subtopic")) for c in constraints})
    out["leaves_seen"] = len({(c.get("topic"), c.get("subtopic"), c.get("leaf")) for c in constraints})
    if table is not None:
      out["subtopics_in_table"] = sum(len(t["subtopics"]) for t in table["topics"])
    if tree is not None:
      out["leaves_in_tree"] = sum(len(v) for t in tree["topics"].values() for v in t.values())
  else:
    names = collections.Counter(c.get("function_name") for c in constraints)
    out["function_names_requested"] = len(names)
    out["max_records_per_function_name"] = max(names.values()) if names else 0
    if table is not None:
      from data_gen.name_space import topic_name_spaces
      out["function_names_in_space"] = sum(len(s) for s in topic_name_spaces(table))
  return out


def _records(out_dir: str) -> tuple[list[dict], dict]:
  """Records of DIR (or of every rank directory under it) and the first manifest found."""
  from data_gen.provenance import rank_dirs
  records, manifest = [], {}
  for d in rank_dirs(out_dir):
    records.extend(read_records(d))
    path = os.path.join(d, "manifest.json")
    if not manifest and os.path.exists(path):
      with open(path) as f:
        manifest = json.load(f)
  return records, manifest


def build_report(out_dir: str, threshold: float = 0.7) -> dict:
  records, manifest = _records(out_dir)
  if not records:
    raise ValueError(f"no records in {out_dir} (expected shard-*.jsonl.gz / .parquet files)")
  kind = manifest.get("kind") or records[0].get("source", "").removeprefix("synthetic_")
  n = len(records)
  table, tree = _sources(out_dir, kind, manifest)

  dups = near_duplicates(records, threshold)
  names = collections.Counter(name for r in records for name in set(_DEF.findall(r["text"])))
  cells = _cells(records, kind)
  cell_counts = collections.Counter(cells)
  p = np.array(list(cell_counts.values()), dtype=np.float64) / n
  entropy = float(-(p * np.log2(p)).sum())
  table_cells = _table_cells(kind, table, tree)
  keys = CELL_KEYS.get(kind, ())
  per_dimension = {k: collections.Counter(c[i] for c in cells).most_common(10)
                   for i, k in enumerate(keys)}
  openings = collections.Counter(_opening(r) for r in records)
  usage = [r.get("usage") or {} for r in records]
  completion_tokens = np.array([u.get("completion_tokens", 0) for u in usage], dtype=np.int64)
  words = np.array([len(r["text"].split()) for r in records], dtype=np.int64)

  invalid = collections.Counter(r.get("invalid_reason") for r in records if r.get("valid") is False)
  report = {
      "dir": out_dir, "kind": kind, "records": n, "near_duplicates": dups,
      "distinct_ngrams": distinct_ngrams(records),
      "coverage": _coverage(kind, records, table, tree),
      "lengths": {"words": _percentiles(words), "completion_tokens": _percentiles(completion_tokens)},
      "validity": {"invalid_kept": sum(invalid.values()), "by_reason": dict(invalid)},
      "function_names": {"distinct": len(names), "per_record": len(names) / n,
                         "top": names.most_common(10)},
      "cells": {"distinct": len(cell_counts), "table_cells": table_cells,
                "table_coverage": len(cell_counts) / table_cells if table_cells else None,
                "max_records_per_cell": max(cell_counts.values()),
                "entropy_bits": entropy,
                "entropy_ratio": entropy / math.log2(n) if n > 1 else 1.0,
                "top": [[list(c), k] for c, k in cell_counts.most_common(5)],
                "per_dimension": per_dimension},
      "openings": {"distinct": len(openings), "top": [[o, k, k / n] for o, k in
                                                      openings.most_common(10)]},
      "tokens": {"completion_tokens_total": int(completion_tokens.sum()),
                 "completion_tokens_mean": float(completion_tokens.mean()),
                 "completion_tokens_p50": float(np.percentile(completion_tokens, 50)),
                 "completion_tokens_p90": float(np.percentile(completion_tokens, 90)),
                 "words_total": int(words.sum()), "words_mean": float(words.mean()),
                 "cost_usd": float(sum(u.get("cost_usd", 0.0) for u in usage))},
  }
  flags = []
  if dups["rate"] > 0.02:
    flags.append(f"near_duplicates: {dups['rate']:.1%} of records (>= {threshold} Jaccard with an "
                 "earlier record)")
  if openings.most_common(1)[0][1] / n > 0.2 and n >= 20:
    flags.append(f"openings: {openings.most_common(1)[0][1] / n:.0%} of records start with "
                 f"{openings.most_common(1)[0][0]!r}")
  if kind == "exercises" and len(names) < 0.5 * n:
    flags.append(f"function_names: only {len(names)} distinct names for {n} exercises")
  if n >= 100 and report["distinct_ngrams"]["distinct_4"] < 0.5:
    flags.append(f"distinct_ngrams: only {report['distinct_ngrams']['distinct_4']:.0%} of word "
                 "4-grams are distinct")
  if n >= 100 and report["cells"]["entropy_ratio"] < 0.8:
    flags.append(f"cells: skewed distribution (entropy ratio {report['cells']['entropy_ratio']:.2f})")
  report["flags"] = flags
  return report


def plot(report: dict, records: list[dict], path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kind = report["kind"]
  cells = _cells(records, kind)
  fig, axes = plt.subplots(3, 2, figsize=(13, 13))
  topics = collections.Counter(c[0] for c in cells).most_common()
  axes[0, 0].barh([str(t)[:32] for t, _ in topics][::-1], [k for _, k in topics][::-1])
  axes[0, 0].set_title("records per topic")
  axes[0, 0].tick_params(axis="y", labelsize=6)
  seen, curve = set(), []
  for c in cells:
    seen.add(c)
    curve.append(len(seen))
  axes[0, 1].plot(np.arange(1, len(cells) + 1), curve, label="distinct cells")
  axes[0, 1].plot([1, len(cells)], [1, len(cells)], "--", color="gray", label="every record new")
  axes[0, 1].set_xlabel("records")
  axes[0, 1].set_title(f"constraint-cell coverage ({report['cells']['distinct']} cells"
                       + (f" of {report['cells']['table_cells']})" if report["cells"]["table_cells"] else ")"))
  axes[0, 1].legend()
  counts = list(collections.Counter(cells).values())
  axes[1, 0].hist(counts, bins=range(1, max(counts) + 2))
  axes[1, 0].set_xlabel("records in the cell")
  axes[1, 0].set_ylabel("cells")
  axes[1, 0].set_title("records per constraint cell")
  openings = report["openings"]["top"]
  axes[1, 1].barh([o[:40] for o, _, _ in openings][::-1], [k for _, k, _ in openings][::-1])
  axes[1, 1].set_title(f"most frequent openings; near-duplicates {report['near_duplicates']['rate']:.1%}")
  axes[1, 1].tick_params(axis="y", labelsize=7)
  words = [len(r["text"].split()) for r in records]
  axes[2, 0].hist(words, bins=40)
  axes[2, 0].set_xlabel("words per record")
  axes[2, 0].set_ylabel("records")
  axes[2, 0].set_title(f"length (median {np.median(words):.0f} words)")
  ngrams = report["distinct_ngrams"]
  axes[2, 1].bar([k.removeprefix("distinct_") for k in ngrams], list(ngrams.values()))
  axes[2, 1].set_ylim(0, 1)
  axes[2, 1].set_xlabel("n")
  axes[2, 1].set_title("distinct word n-grams / all n-grams")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_gen report", description=__doc__.split("\n")[0])
  parser.add_argument("dir")
  parser.add_argument("--threshold", type=float, default=0.7, help="MinHash Jaccard for a near-dup")
  parser.add_argument("--out", default=None, help="where report.json / report.png go (default: DIR)")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.dir):
    print(f"error: {args.dir} is not a directory", file=sys.stderr)
    return 2
  try:
    report = build_report(args.dir, args.threshold)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = args.out or args.dir
  os.makedirs(out, exist_ok=True)
  report["plot"] = os.path.join(out, "report.png")
  plot(report, _records(args.dir)[0], report["plot"])
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report))
  return 0
