"""How training sources are mixed: the share of rows drawn from each.

  "tokens"   share_i ∝ weight_i x tokens_i: with every weight 1 each token of every source is seen
             equally often, which is what concatenating the sources does (paper §2: CodeTextbook
             is the filtered code and the synthetic textbooks together). A weight then says how
             many times more often a source's tokens are seen than the others' (2 = upsampled 2x).
  "weights"  share_i ∝ weight_i, whatever the sources' sizes (fixed proportions).
"""

from __future__ import annotations

MIXTURES = ("tokens", "weights")


def check(mixture: str) -> None:
  if mixture not in MIXTURES:
    raise ValueError(f"data.mixture must be one of {MIXTURES}, got {mixture!r}")


def shares(mixture: str, weights: dict[str, float], tokens: dict[str, int]) -> dict[str, float]:
  """Row shares per source name (summing to 1) under `mixture`."""
  check(mixture)
  if mixture == "tokens":
    empty = sorted(name for name in weights if tokens[name] <= 0)
    if empty:
      raise ValueError(f"data.mixture='tokens' weights sources by their token counts, but "
                       f"{empty} hold no tokens")
    raw = {name: w * tokens[name] for name, w in weights.items()}
  else:
    raw = dict(weights)
  total = sum(raw.values())
  return {name: value / total for name, value in raw.items()}


def num_tokens(docs) -> int:
  """Tokens in a source's training documents (this process's share).

  In-memory documents are counted exactly; a subset of pre-tokenized shards is estimated from the
  shards' token totals in proportion to the documents it holds.
  """
  if hasattr(docs, "num_tokens"):
    return int(docs.num_tokens)
  source = docs.source  # a Subset of ArrayRecordDocs
  return round(source.num_tokens * len(docs) / max(len(source), 1))
