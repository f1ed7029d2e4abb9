"""Select: keep the records the classifier scores highest, by threshold or by a token budget.

phi-1 kept ~6B of >35B tokens (§2.1): a budget, not a fixed threshold. `select(..., token_budget=N)`
keeps the best-scoring records until N tokens; `threshold=t` keeps every record scoring >= t. The
report (JSON + PNG) shows the score distribution, the operating point and examples on both sides.

Token counts are the tokenizer's the model trains with (`token_counter`): CodeGen's, which is
phi-1's, when the embedder is CodeGen; the CPU demo's; or any tokenizer file.

At corpus scale (35M records) selection runs in bounded memory: scores are stored rounded to 5
decimals, so a histogram with one bin per value (`BINS`, tokens and counts per bin) finds the
budget's boundary exactly (`budget_boundary`); then each task keeps its records with `TaskSelector`
(above the boundary; at it, in record order while the budget lasts: `select`'s result, record
for record). `Report` gathers the report's histograms and examples in the same streaming pass.
"""

from __future__ import annotations

import heapq
import json
import os
import pathlib
from typing import Callable

import numpy as np

TOKENIZERS = "'embedder' (the embedder's own), 'demo' (the CPU demo's), or a tokenizer path"


def token_counter(spec: str, embedder=None) -> Callable[[str], int]:
  """text -> token count with the tokenizer `spec` names (TOKENIZERS)."""
  if spec == "embedder":
    encode = getattr(embedder, "encode", None)
    if encode is None:
      raise ValueError(f"the {getattr(embedder, 'name', embedder)!r} embedder has no tokenizer to "
                       "count the token budget with: pass --tokenizer PATH (tokenizer.json, *.model "
                       "or an HF directory) or --tokenizer demo")
    return lambda text: len(encode(text))
  from phi1 import tokenizer as tokenizer_lib  # lazy: phi1 is the trainer's package
  if spec == "demo":
    from phi1 import demo_corpus
    path = demo_corpus.build(demo_corpus.default_cache_dir()).tokenizer_path
  elif os.path.exists(spec):
    path = spec
  else:
    raise FileNotFoundError(f"tokenizer {spec!r} not found; --tokenizer takes {TOKENIZERS}")
  encode = tokenizer_lib.load_tokenizer(path).encode
  return lambda text: len(encode(text))


def select(scores: np.ndarray, tokens: np.ndarray, *, threshold: float | None = None,
           token_budget: int | None = None) -> tuple[np.ndarray, float | None]:
  """(keep mask [N], effective threshold, None if nothing fits): one of threshold / token_budget."""
  if (threshold is None) == (token_budget is None):
    raise ValueError("select by exactly one of threshold=... or token_budget=...")
  scores = np.asarray(scores, np.float64)
  if threshold is not None:
    return scores >= threshold, float(threshold)
  order = np.argsort(-scores, kind="stable")
  within = np.cumsum(np.asarray(tokens, np.int64)[order]) <= token_budget
  keep = np.zeros(len(scores), bool)
  keep[order[within]] = True
  effective = float(scores[keep].min()) if keep.any() else None
  return keep, effective


# ------------------------------------------------------------------------- bounded-memory select
BINS = 100_001   # score * 1e5 rounded: the scores as stored (5 decimals), one bin each


def score_bin(score: float) -> int:
  return min(BINS - 1, max(0, int(round(float(score) * 100_000))))


def budget_boundary(tokens_per_bin: np.ndarray, token_budget: int) -> tuple[int, int]:
  """(boundary bin, tokens it may still add): every record in a higher bin fits the budget; at
  the boundary, records fit in order while the remaining tokens last. (-1, 0): all fit."""
  from_top = np.cumsum(tokens_per_bin[::-1])   # tokens in bins >= BINS - 1 - k
  k = int(np.searchsorted(from_top, token_budget, side="right"))
  if k >= BINS:
    return -1, 0
  return BINS - 1 - k, int(token_budget - (from_top[k - 1] if k else 0))


class TaskSelector:
  """Keep decisions for one task's records in order, given the plan and, for a budget, the
  boundary tokens of the tasks before it (`offset`)."""

  def __init__(self, plan: dict, offset: int = 0):
    self.threshold, self.boundary = plan.get("threshold"), plan.get("boundary_bin")
    self.remaining, self.used = plan.get("boundary_tokens", 0), offset

  def keep(self, score: float, tokens: int) -> bool:
    if self.boundary is None:
      return score >= self.threshold
    b = score_bin(score)
    if b != self.boundary:
      return b > self.boundary
    self.used += tokens
    return self.used <= self.remaining


class _Best:
  """The n records with the smallest keys (ties: the earlier record)."""

  def __init__(self, n: int):
    self.n, self.heap = n, []

  def add(self, key: float, index: int, rid: str, score: float):
    item = (-key, -index, rid, score)
    if len(self.heap) < self.n:
      heapq.heappush(self.heap, item)
    elif item > self.heap[0]:
      heapq.heapreplace(self.heap, item)

  def ordered(self) -> list[tuple[str, float]]:
    return [(rid, score) for _, _, rid, score in sorted(self.heap, reverse=True)]


class Report:
  """The report's statistics, gathered one record at a time in record order: per-bin counts and
  tokens (all and kept), and the examples worth reading (best and worst, both sides of the
  boundary)."""

  def __init__(self, n_examples: int = 5):
    self.counts, self.tokens = np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)
    self.kept_counts, self.kept_tokens = np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)
    self.n = 0
    self.best = {"top_kept": _Best(n_examples), "borderline_kept": _Best(n_examples),
                 "borderline_dropped": _Best(n_examples), "bottom_dropped": _Best(n_examples)}

  def add(self, rid: str, score: float, tokens: int, kept: bool):
    b = score_bin(score)
    self.counts[b] += 1
    self.tokens[b] += tokens
    if kept:
      self.kept_counts[b] += 1
      self.kept_tokens[b] += tokens
      self.best["top_kept"].add(-score, self.n, rid, score)
      self.best["borderline_kept"].add(score, self.n, rid, score)
    else:
      self.best["borderline_dropped"].add(-score, self.n, rid, score)
      self.best["bottom_dropped"].add(score, self.n, rid, score)
    self.n += 1

  def example_ids(self) -> set[str]:
    return {rid for b in self.best.values() for rid, _ in b.ordered()}

  def save(self, path: pathlib.Path):
    np.savez(path, counts=self.counts, tokens=self.tokens, kept_counts=self.kept_counts,
             kept_tokens=self.kept_tokens,
             examples=json.dumps({k: b.ordered() for k, b in self.best.items()}))

  @classmethod
  def load(cls, path: pathlib.Path) -> dict:
    z = np.load(path)
    return {k: z[k] for k in ("counts", "tokens", "kept_counts", "kept_tokens")} | {
        "examples": json.loads(str(z["examples"]))}


def _quantile(counts: np.ndarray, q: float) -> float:
  """numpy's default (linear) quantile of the scores, from their one-per-value histogram."""
  cum, n = np.cumsum(counts), int(counts.sum())
  pos = q * (n - 1)
  lo, hi = (int(np.searchsorted(cum, k, side="right")) for k in (int(np.floor(pos)), int(np.ceil(pos))))
  return (lo + (hi - lo) * (pos - np.floor(pos))) / 100_000


def write_report(out_dir: str | pathlib.Path, stats: dict, effective_threshold: float | None,
                 texts: dict[str, str], *, extra: dict | None = None) -> dict:
  """report.json + score_distribution.png in `out_dir` from `Report.load`'s statistics; `texts`
  holds the examples' texts. Returns the report dict."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  counts, kept = stats["counts"], stats["kept_counts"]
  n = int(counts.sum())
  coarse = lambda c, k: np.add.reduceat(c, (np.arange(k) * (BINS - 1)) // k).tolist()
  hist20 = coarse(counts, 20)
  report = {"records": n, "kept": int(kept.sum()),
            "kept_fraction": round(float(kept.sum()) / n, 4) if n else 0.0,
            "tokens_total": int(stats["tokens"].sum()), "tokens_kept": int(stats["kept_tokens"].sum()),
            "effective_threshold": effective_threshold,
            "score_histogram": {"edges": [round(e, 3) for e in np.linspace(0, 1, 21).tolist()],
                                "counts": hist20},
            "score_quantiles": {str(q): round(_quantile(counts, q), 4)
                                for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if n else {},
            "examples": {name: [{"id": rid, "score": round(float(score), 4),
                                 "head": texts.get(rid, "")[:400]} for rid, score in rows]
                         for name, rows in stats["examples"].items()},
            **(extra or {})}
  (out_dir / "report.json").write_text(json.dumps(report, indent=1))
  _plot(out_dir / "score_distribution.png", coarse(kept, 40),
        coarse(counts - kept, 40), effective_threshold)
  return report


def _plot(path: pathlib.Path, kept_40: list[int], dropped_40: list[int],
          threshold: float | None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  edges = np.linspace(0, 1, 41)
  ax.stairs(kept_40, edges, fill=True, color="tab:green", label=f"kept ({sum(kept_40)})")
  ax.stairs(dropped_40, edges, fill=True, color="tab:gray", alpha=0.8,
            label=f"dropped ({sum(dropped_40)})")
  if threshold is not None:
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
  ax.set_xlabel("classifier P(educational)")
  ax.set_ylabel("records")
  ax.set_title("Filter score distribution")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
