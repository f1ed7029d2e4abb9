"""Dedup: exact duplicates by hash of normalised text, near duplicates by MinHash LSH.

Defaults follow datatrove's MinHash dedup, which FineWeb and Stack-Edu used: word 5-gram shingles,
14 bands x 8 rows = 112 permutations. Two documents with Jaccard similarity s share a band with
probability 1 - (1 - s^8)^14: 0.05 at s = 0.5, 0.5 at s = 0.69, 0.93 at s = 0.8, 0.99 at s = 0.85.

Built to run on The Stack's Python subset (~35M files) on one machine, as datatrove does it:
  1. sign      each record becomes 16 bytes of exact key + one 64-bit hash per band (the MinHash
               comes from datasketch, in a process pool); no text is kept. `dedup_jsonl` writes
               these in chunk files as it goes, so an interrupted run resumes at the last chunk.
  2. group     per band, a sort of N 64-bit hashes finds the records that share it (memory: one
               band at a time, 12 bytes per record); the union of all bands' groups gives the
               near-duplicate components (scipy's connected_components).
  3. write     a second pass over the input writes the kept records and the clusters.
Exact duplicates are removed first, so MinHash groups only distinct texts. Each cluster keeps its
first record in input order (deterministic, and for sorted inputs the canonical path).
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import os
import pathlib
import re
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
  chunk_size: int = 16_384   # records per signature file (the unit of resumption)

  @property
  def num_perm(self) -> int:
    return self.bands * self.rows


def normalise(text: str) -> str:
  """Text up to trailing spaces, blank lines and line endings: what an exact duplicate ignores."""
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  return _BLANK_LINES.sub("\n", _TRAILING_WS.sub("", text)).strip()


def _exact_digest(text: str) -> bytes:
  return hashlib.sha1(normalise(text).encode("utf-8", "replace")).digest()


def exact_key(text: str) -> str:
  return _exact_digest(text).hex()


def shingles(text: str, n: int) -> set[bytes]:
  words = _WORD.findall(text.lower())
  if len(words) < n:
    return {" ".join(words).encode()}
  return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def signature(text: str, config: DedupConfig) -> LeanMinHash:
  m = MinHash(num_perm=config.num_perm, seed=config.seed)
  m.update_batch(shingles(text, config.ngram))
  return LeanMinHash(m)


def _hash64(data: bytes) -> int:
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def sign(text: str, config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
  """(exact key as 2 uint64, one uint64 per band). Two texts share a band hash iff the band's
  `rows` MinHash values are equal (up to a 2^-64 hash collision)."""
  exact = np.frombuffer(_exact_digest(text)[:16], dtype=np.uint64)
  values = signature(text, config).hashvalues.astype(np.uint64)
  r = config.rows
  bands = np.array([_hash64(values[b * r:(b + 1) * r].tobytes()) for b in range(config.bands)],
                   dtype=np.uint64)
  return exact, bands


class _Signer:
  """Picklable: signs a batch of texts in a worker process."""

  def __init__(self, config: DedupConfig):
    self.config = config

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    exact = np.empty((len(texts), 2), np.uint64)
    bands = np.empty((len(texts), self.config.bands), np.uint64)
    for i, text in enumerate(texts):
      exact[i], bands[i] = sign(text, self.config)
    return exact, bands


def _sign_all(texts: Iterable[str], config: DedupConfig, pool=None
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Signatures of `texts` in order, in batches of 256."""
  signer = _Signer(config)
  batches = ingest.batched(texts, 256)
  return pool.imap(signer, batches) if pool is not None else map(signer, batches)


# ------------------------------------------------------------------------------------- grouping
def first_of_group(keys: np.ndarray) -> np.ndarray:
  """For each row of `keys` ([N] or [N, K] uint64), the index of the first row equal to it."""
  keys = keys.reshape(len(keys), -1)
  n = len(keys)
  if n == 0:
    return np.zeros(0, np.int64)
  order = np.lexsort(keys.T[::-1])  # stable: equal rows keep ascending index order
  ordered = keys[order]
  starts = np.ones(n, bool)
  starts[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
  start_of_run = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
  first = np.empty(n, np.int64)
  first[order] = order[start_of_run]
  return first


@dataclasses.dataclass
class Groups:
  """Duplicate structure over records 0..N-1 (input order)."""
  exact_first: np.ndarray   # [N] index of the first record with the same normalised text
  near_root: np.ndarray     # [N] for exact-firsts: first record of its near-duplicate component

  @property
  def keep(self) -> np.ndarray:
    n = len(self.exact_first)
    idx = np.arange(n)
    return np.flatnonzero((self.exact_first == idx) & (self.near_root == idx))


def group(exact: np.ndarray, band: Callable[[int], np.ndarray], bands: int) -> Groups:
  """`exact` [N, 2] keys; `band(b)` gives band b's [N] hashes (loaded one band at a time)."""
  n = len(exact)
  exact_first = first_of_group(exact)
  distinct = np.flatnonzero(exact_first == np.arange(n))
  m = len(distinct)
  # Star edges from each record to the first record sharing its band hash: the same components
  # as all pairs, with at most one edge per record and band.
  src, dst = [], []
  for b in range(bands):
    first = first_of_group(band(b)[distinct])
    moved = np.flatnonzero(first != np.arange(m))
    src.append(moved)
    dst.append(first[moved])
  src = np.concatenate(src) if src else np.zeros(0, np.int64)
  dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
  graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(m, m))
  _, labels = connected_components(graph, directed=False)
  root_of_label = np.full(labels.max(initial=-1) + 1, m, np.int64)
  np.minimum.at(root_of_label, labels, np.arange(m))  # the earliest record represents
  near_root = np.arange(n)
  near_root[distinct] = distinct[root_of_label[labels]]
  return Groups(exact_first, near_root)


def clusters(groups: Groups, ids: Callable[[int], str]) -> Iterator[dict]:
  """{"kept", "members", "kind"} for each group of 2+ records: exact ones first, then near ones,
  each in order of the kept record; members in input order (exact copies appear only in their
  exact cluster: a near cluster lists distinct texts)."""
  for first_array, kind in ((groups.exact_first, "exact"), (groups.near_root, "near")):
    n = len(first_array)
    moved = np.flatnonzero(first_array != np.arange(n))
    if kind == "near":  # near roots only mean something for exact-firsts
      moved = moved[groups.exact_first[moved] == moved]
    if len(moved) == 0:
      continue
    roots = first_array[moved]
    order = np.lexsort((moved, roots))
    roots, moved = roots[order], moved[order]
    bounds = np.flatnonzero(np.diff(roots)) + 1
    for root_run, member_run in zip(np.split(roots, bounds), np.split(moved, bounds)):
      root = int(root_run[0])
      yield {"kept": ids(root), "members": [ids(root)] + [ids(int(i)) for i in member_run],
             "kind": kind}


# ------------------------------------------------------------------------------------ in memory
@dataclasses.dataclass
class DedupResult:
  keep: list[str]                     # ids kept, input order
  exact_duplicates: int               # records dropped as exact copies
  near_duplicates: int                # records dropped as near copies
  clusters: list[dict]                # {"kept": id, "members": [ids...], "kind": "exact"|"near"}

  def summary(self) -> dict:
    return summarise(len(self.keep), self.exact_duplicates, self.near_duplicates,
                     [len(c["members"]) for c in self.clusters])


def summarise(kept: int, exact: int, near: int, cluster_sizes: Sequence[int]) -> dict:
  return {"kept": kept, "exact_duplicates": exact, "near_duplicates": near,
          "clusters": len(cluster_sizes), "largest_cluster": max(cluster_sizes, default=0)}


def _counts(groups: Groups) -> tuple[int, int]:
  n = len(groups.exact_first)
  idx = np.arange(n)
  distinct = groups.exact_first == idx
  return int(n - distinct.sum()), int((distinct & (groups.near_root != idx)).sum())


def dedup(records: Iterable[dict], config: DedupConfig = DedupConfig()) -> DedupResult:
  """Deduplicates records (dicts with `id`, `text`) held in memory: notebooks and tests. For a
  corpus on disk use `dedup_jsonl`, which keeps no text in memory and resumes."""
  ids, texts = [], []
  for r in records:
    ids.append(r["id"])
    texts.append(r["text"])
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise ValueError(f"dedup: record id {dup!r} appears more than once; ids must be unique")
  exact = np.zeros((len(ids), 2), np.uint64)
  bands = np.zeros((len(ids), config.bands), np.uint64)
  pool = ingest.process_pool(config.workers) if config.workers > 1 and len(texts) > 512 else None
  try:
    start = 0
    for e, b in _sign_all(texts, config, pool):
      exact[start:start + len(e)], bands[start:start + len(e)] = e, b
      start += len(e)
  finally:
    if pool is not None:
      pool.close()
  groups = group(exact, lambda b: bands[:, b], config.bands)
  found = list(clusters(groups, ids.__getitem__))
  n_exact, n_near = _counts(groups)
  return DedupResult([ids[i] for i in groups.keep], n_exact, n_near, found)


# -------------------------------------------------------------------------------------- on disk
def _write_npz(path: pathlib.Path, **arrays):
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # a killed run leaves no half chunk


def dedup_jsonl(source: str | os.PathLike, out_dir: str | os.PathLike,
                config: DedupConfig = DedupConfig(), progress: Callable[[int], None] | None = None
                ) -> dict:
  """Deduplicates a JSON-lines file of records (`id`, `text`, anything else is carried along).

  Writes `out_dir/records.jsonl` (kept records, input order) and `out_dir/clusters.jsonl`; the
  signatures go to `out_dir/signatures/` (16 + 8 x bands bytes per record) and are reused by a
  rerun with the same settings and input, so a killed run resumes at its last finished chunk.
  Memory: one chunk of text, then 12 bytes per record per band. Returns the summary."""
  source, out_dir = pathlib.Path(source), pathlib.Path(out_dir)
  stat = source.stat()
  settings = {"ngram": config.ngram, "bands": config.bands, "rows": config.rows,
              "seed": config.seed, "chunk_size": config.chunk_size,
              "source": str(source.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
  sig_dir = ingest.work_dir(out_dir / "signatures", settings)  # stale ones are thrown away
  chunk_path = lambda c: sig_dir / f"chunk-{c:06d}.npz"

  # Pass 1: sign, one chunk of texts at a time. Finished chunks are read again but not signed.
  n = bytes_in = 0
  id_hashes = array.array("Q")  # 8 bytes per record, not a Python int's 36
  texts: list[str] = []
  pool = ingest.process_pool(config.workers) if config.workers > 1 else None

  def finish(c: int):
    if texts:
      parts = list(_sign_all(texts, config, pool))
      _write_npz(chunk_path(c), exact=np.concatenate([e for e, _ in parts]),
                 bands=np.concatenate([b for _, b in parts]))
      if progress is not None:
        progress(len(texts))
      texts.clear()

  try:
    for r in ingest.read_jsonl(source):
      if not isinstance(r.get("text"), str) or "id" not in r:
        raise ValueError(f"{source}: record {n} has no `id` or no string `text`")
      id_hashes.append(_hash64(str(r["id"]).encode()))
      bytes_in += len(r["text"].encode("utf-8", "replace"))
      if not chunk_path(n // config.chunk_size).exists():
        texts.append(r["text"])
      n += 1
      if n % config.chunk_size == 0:
        finish(n // config.chunk_size - 1)
    finish(n // config.chunk_size)
  finally:
    if pool is not None:
      pool.close()
  _check_unique_ids(source, np.frombuffer(id_hashes, np.uint64))

  # Pass 2: group, one band in memory at a time.
  chunks = [chunk_path(c) for c in range(-(-n // config.chunk_size))]
  exact = (np.concatenate([np.load(p)["exact"] for p in chunks]) if chunks
           else np.zeros((0, 2), np.uint64))
  groups = group(exact, lambda b: np.concatenate([np.load(p)["bands"][:, b] for p in chunks]),
                 config.bands)

  # Pass 3: write the kept records, and remember only the ids that clusters name.
  idx = np.arange(n)
  keep = np.zeros(n, bool)
  keep[groups.keep] = True
  named = (groups.exact_first != idx) | (groups.near_root != idx)
  named[groups.exact_first[named]] = True
  named[groups.near_root[named]] = True
  ids: dict[int, str] = {}

  def kept_records() -> Iterator[dict]:
    for i, r in enumerate(ingest.read_jsonl(source)):
      if named[i]:
        ids[i] = r["id"]
      if keep[i]:
        yield r

  kept = ingest.write_jsonl(kept_records(), out_dir / "records.jsonl")
  sizes: list[int] = []

  def counted(found: Iterator[dict]) -> Iterator[dict]:
    for c in found:
      sizes.append(len(c["members"]))
      yield c

  ingest.write_jsonl(counted(clusters(groups, ids.__getitem__)), out_dir / "clusters.jsonl")
  n_exact, n_near = _counts(groups)
  return {"docs_in": n, "docs_out": kept, "bytes_in": bytes_in,
          **summarise(kept, n_exact, n_near, sizes)}


def _check_unique_ids(source: pathlib.Path, id_hashes: np.ndarray):
  """Ids are compared by 64-bit hash; a clash is confirmed on the ids themselves."""
  first = first_of_group(id_hashes)
  clash = np.flatnonzero(first != np.arange(len(first)))
  if len(clash) == 0:
    return
  wanted = set(clash.tolist()) | set(first[clash].tolist())
  seen = {i: r["id"] for i, r in enumerate(ingest.read_jsonl(source)) if i in wanted}
  for i in clash.tolist():
    if seen[i] == seen[int(first[i])]:
      raise ValueError(f"dedup: record id {seen[i]!r} appears more than once in {source}; "
                       "ids must be unique")


# ------------------------------------------------------------------------------------- helpers
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
