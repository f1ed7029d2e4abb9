"""Dedup: exact (normalised) copies, MinHash LSH near copies, clusters, representatives."""

import random

import pytest

from data_gen.filtering import dedup


def _doc(rng: random.Random, n_words: int = 400) -> str:
  vocab = [f"w{i}" for i in range(3000)]
  lines = []
  for _ in range(n_words // 8):
    lines.append("    " + " = ".join(rng.choice(vocab) for _ in range(8)))
  return "\n".join(lines) + "\n"


def test_exact_near_and_distinct():
  rng = random.Random(0)
  base, other = _doc(rng), _doc(rng)
  lines = base.splitlines()
  lines[10] = "    changed = line"  # one line of fifty: Jaccard ~ 0.9
  records = [
      {"id": "a", "text": base},
      {"id": "b", "text": other},
      {"id": "a-ws", "text": base.replace("\n", "   \n\n")},  # trailing spaces, blank lines
      {"id": "a-near", "text": "\n".join(lines) + "\n"},
  ]
  result = dedup.dedup(records)
  assert result.keep == ["a", "b"]
  assert result.exact_duplicates == 1 and result.near_duplicates == 1
  kinds = {c["kind"]: c for c in result.clusters}
  assert kinds["exact"] == {"kept": "a", "members": ["a", "a-ws"], "kind": "exact"}
  assert kinds["near"]["kept"] == "a" and kinds["near"]["members"] == ["a", "a-near"]
  assert dedup.exact_jaccard(base, records[3]["text"]) > 0.8
  assert dedup.exact_jaccard(base, other) < 0.05


def test_minhash_estimate_tracks_jaccard():
  rng = random.Random(1)
  a = _doc(rng, 2000)
  words = a.split()
  b = " ".join(words[: len(words) // 2] + [f"new{i}" for i in range(len(words) // 2)])
  assert dedup.estimated_jaccard(a, b) == pytest.approx(dedup.exact_jaccard(a, b), abs=0.12)


def test_band_probability_and_defaults():
  config = dedup.DedupConfig()
  assert (config.ngram, config.bands, config.rows, config.num_perm) == (5, 14, 8, 112)
  assert dedup.band_collision_probability(0.685) == pytest.approx(0.5, abs=0.01)
  assert dedup.band_collision_probability(0.9) > 0.99
  assert dedup.band_collision_probability(0.5) < 0.06


def test_parallel_equals_serial_and_chains_cluster():
  rng = random.Random(2)
  docs = [_doc(rng) for _ in range(80)]
  records = [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]
  # A chain of near copies, each differing from the last by one line, forms one cluster.
  lines = docs[0].splitlines()
  for k in range(3):
    lines[5 + k] = f"    edit{k} = x"
    records.append({"id": f"chain{k}", "text": "\n".join(lines) + "\n"})
  serial = dedup.dedup(records, dedup.DedupConfig(workers=1))
  parallel = dedup.dedup(records, dedup.DedupConfig(workers=2))
  assert serial.keep == parallel.keep and serial.clusters == parallel.clusters
  assert len(serial.keep) == 80
  (cluster,) = serial.clusters
  assert cluster["kept"] == "d0" and set(cluster["members"]) == {"d0", "chain0", "chain1", "chain2"}


def test_duplicate_ids_rejected():
  with pytest.raises(ValueError, match="appears more than once"):
    dedup.dedup([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])
