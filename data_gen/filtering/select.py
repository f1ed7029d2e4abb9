"""Select: keep the records the classifier scores highest, by threshold or by a token budget.

phi-1 kept ~6B of >35B tokens (§2.1): a budget, not a fixed threshold. `select(..., token_budget=N)`
keeps the best-scoring records until N tokens; `threshold=t` keeps every record scoring >= t. The
report (JSON + PNG) shows the score distribution, the operating point and examples on both sides.

Token counts are the tokenizer's the model trains with (`token_counter`): CodeGen's, which is
phi-1's, when the embedder is CodeGen; the CPU demo's; or any tokenizer file.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Mapping, Sequence

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


def _example(text: str, score: float, rid: str, max_chars: int = 400) -> dict:
  return {"id": rid, "score": round(float(score), 4), "head": text[:max_chars]}


def example_indices(scores: np.ndarray, keep: np.ndarray, n: int = 5) -> dict[str, np.ndarray]:
  """Record indices to show: the best and worst, and both sides of the boundary, where the
  classifier's judgement is most worth reading."""
  scores = np.asarray(scores)
  kept_idx, dropped_idx = np.nonzero(keep)[0], np.nonzero(~keep)[0]
  return {"top_kept": kept_idx[np.argsort(-scores[kept_idx], kind="stable")][:n],
          "borderline_kept": kept_idx[np.argsort(scores[kept_idx], kind="stable")][:n],
          "borderline_dropped": dropped_idx[np.argsort(-scores[dropped_idx], kind="stable")][:n],
          "bottom_dropped": dropped_idx[np.argsort(scores[dropped_idx], kind="stable")][:n]}


def write_report(out_dir: str | pathlib.Path, ids: Sequence[str] | Mapping[int, str],
                 scores: np.ndarray,
                 tokens: np.ndarray, keep: np.ndarray, effective_threshold: float | None,
                 texts: dict[str, str], *, n_examples: int = 5, extra: dict | None = None) -> dict:
  """report.json + score_distribution.png in `out_dir`; `ids` (a sequence, or a mapping of the
  example positions) and `texts` cover at least the examples (see `example_indices`). Returns
  the report dict."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  scores = np.asarray(scores)
  counts, edges = np.histogram(scores, bins=20, range=(0.0, 1.0))
  examples = {name: [_example(texts.get(ids[i], ""), scores[i], ids[i]) for i in idx]
              for name, idx in example_indices(scores, keep, n_examples).items()}
  report = {"records": int(len(scores)), "kept": int(keep.sum()),
            "kept_fraction": round(float(keep.mean()) if len(keep) else 0.0, 4),
            "tokens_total": int(np.sum(tokens)), "tokens_kept": int(np.sum(np.asarray(tokens)[keep])),
            "effective_threshold": effective_threshold,
            "score_histogram": {"edges": [round(e, 3) for e in edges.tolist()],
                                "counts": counts.tolist()},
            "score_quantiles": {str(q): round(float(np.quantile(scores, q)), 4)
                                for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if len(scores) else {},
            "examples": examples, **(extra or {})}
  (out_dir / "report.json").write_text(json.dumps(report, indent=1))
  _plot(out_dir / "score_distribution.png", scores, keep, effective_threshold)
  return report


def _plot(path: pathlib.Path, scores: np.ndarray, keep: np.ndarray, threshold: float | None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, 1, 41)
  ax.hist(scores[keep], bins=bins, color="tab:green", label=f"kept ({int(keep.sum())})")
  ax.hist(scores[~keep], bins=bins, color="tab:gray", label=f"dropped ({int((~keep).sum())})")
  if threshold is not None:
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
  ax.set_xlabel("classifier P(educational)")
  ax.set_ylabel("records")
  ax.set_title("Filter score distribution")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
