"""Dedup: exact duplicates by hash of normalised text, near duplicates by MinHash LSH (datasketch).

Defaults follow datatrove's MinHash dedup, which FineWeb and Stack-Edu used: word 5-gram shingles,
14 bands x 8 rows = 112 permutations. Two documents with Jaccard similarity s share a band with
probability 1 - (1 - s^8)^14: 0.05 at s = 0.5, 0.5 at s = 0.69, 0.93 at s = 0.8, 0.99 at s = 0.85.

Near-duplicate pairs (a shared band) are joined into clusters with union-find; each cluster keeps
its first record in input order (deterministic, and for sorted inputs the canonical path). Exact
duplicates are removed first, so MinHash only sees distinct texts. Signatures are computed in a
process pool; the LSH index itself is one in-memory datasketch `MinHashLSH`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable, Sequence

from datasketch import LeanMinHash, MinHash, MinHashLSH

from data_gen.filtering import ingest

_WORD = re.compile(r"\w+")
_TRAILING_WS = re.compile(r"[ \t]+$", re.M)
_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  ngram: int = 5
  bands: int = 14
  rows: int = 8
  seed: int = 1
  workers: int = 1

  @property
  def num_perm(self) -> int:
    return self.bands * self.rows


def normalise(text: str) -> str:
  """Text up to trailing spaces, blank lines and line endings: what an exact duplicate ignores."""
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  return _BLANK_LINES.sub("\n", _TRAILING_WS.sub("", text)).strip()


def exact_key(text: str) -> str:
  return hashlib.sha1(normalise(text).encode("utf-8", "replace")).hexdigest()


def shingles(text: str, n: int) -> set[bytes]:
  words = _WORD.findall(text.lower())
  if len(words) < n:
    return {" ".join(words).encode()}
  return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def signature(text: str, config: DedupConfig) -> LeanMinHash:
  m = MinHash(num_perm=config.num_perm, seed=config.seed)
  m.update_batch(shingles(text, config.ngram))
  return LeanMinHash(m)


class _Signer:
  def __init__(self, config: DedupConfig):
    self.config = config

  def __call__(self, text: str) -> LeanMinHash:
    return signature(text, self.config)


@dataclasses.dataclass
class DedupResult:
  keep: list[str]                     # ids kept, input order
  exact_duplicates: int               # records dropped as exact copies
  near_duplicates: int                # records dropped as near copies
  clusters: list[dict]                # {"kept": id, "members": [ids...], "kind": "exact"|"near"}

  def summary(self) -> dict:
    sizes = [len(c["members"]) for c in self.clusters]
    return {"kept": len(self.keep), "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates, "clusters": len(self.clusters),
            "largest_cluster": max(sizes, default=0)}


def dedup(records: Iterable[dict], config: DedupConfig = DedupConfig()) -> DedupResult:
  """Deduplicates records (dicts with `id`, `text`); returns what to keep and the clusters."""
  ids: list[str] = []
  texts: list[str] = []
  exact_groups: dict[str, list[int]] = {}
  for r in records:
    exact_groups.setdefault(exact_key(r["text"]), []).append(len(ids))
    ids.append(r["id"])
    texts.append(r["text"])
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise ValueError(f"dedup: record id {dup!r} appears more than once; ids must be unique")

  firsts = [g[0] for g in exact_groups.values()]  # one per distinct text, in input order
  firsts.sort()
  clusters = [{"kept": ids[g[0]], "members": [ids[i] for i in g], "kind": "exact"}
              for g in exact_groups.values() if len(g) > 1]

  signer = _Signer(config)
  distinct_texts = [texts[i] for i in firsts]
  if config.workers > 1 and len(distinct_texts) > 64:
    with ingest.process_pool(config.workers) as pool:
      signatures = pool.map(signer, distinct_texts, chunksize=32)
  else:
    signatures = [signer(t) for t in distinct_texts]

  lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
  parent = list(range(len(firsts)))

  def root(i: int) -> int:
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for k, sig in enumerate(signatures):
    for other in lsh.query(sig):
      a, b = root(k), root(other)
      if a != b:
        parent[max(a, b)] = min(a, b)  # the earliest record stays the root
    lsh.insert(k, sig)

  components: dict[int, list[int]] = {}
  for k in range(len(firsts)):
    components.setdefault(root(k), []).append(k)
  keep_positions = sorted(firsts[r] for r in components)
  near = 0
  for r, members in components.items():
    if len(members) > 1:
      near += len(members) - 1
      clusters.append({"kept": ids[firsts[r]], "members": [ids[firsts[m]] for m in members],
                       "kind": "near"})
  exact = len(ids) - len(firsts)
  return DedupResult([ids[i] for i in keep_positions], exact, near, clusters)


def estimated_jaccard(a: str, b: str, config: DedupConfig = DedupConfig()) -> float:
  """MinHash estimate of the shingle Jaccard similarity (for reports and tests)."""
  return signature(a, config).jaccard(signature(b, config))


def exact_jaccard(a: str, b: str, n: int = 5) -> float:
  sa, sb = shingles(a, n), shingles(b, n)
  return len(sa & sb) / max(len(sa | sb), 1)


def band_collision_probability(s: float, bands: int = 14, rows: int = 8) -> float:
  """P(two docs with Jaccard s share at least one band)."""
  return 1.0 - (1.0 - s ** rows) ** bands


def keep_only(records: Iterable[dict], keep_ids: Sequence[str]):
  keep = set(keep_ids)
  return (r for r in records if r["id"] in keep)
