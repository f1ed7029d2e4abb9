"""Dedup: exact (normalised) copies, MinHash LSH near copies, clusters, representatives."""

import json
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


def _planted_corpus(seed: int = 3, n: int = 150) -> list[dict]:
  """Distinct documents plus copies edited to Jaccard ~0.3-0.95 of an original, and exact copies."""
  rng = random.Random(seed)
  docs = [_doc(rng, 200) for _ in range(n)]
  records = [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]
  for k in range(60):
    lines = docs[rng.randrange(n)].splitlines()
    for j in rng.sample(range(len(lines)), rng.randint(1, 12)):
      lines[j] = f"    edit{k}_{j} = y"
    records.insert(rng.randrange(len(records)), {"id": f"e{k}", "text": "\n".join(lines) + "\n"})
  for k in range(10):
    records.append({"id": f"x{k}", "text": records[rng.randrange(n)]["text"] + "\n\n"})
  return records


def _lsh_reference_components(records, config) -> set[frozenset]:
  """Near-duplicate components from datasketch's own in-memory MinHashLSH (same bands x rows)."""
  from datasketch import MinHashLSH
  seen, distinct = set(), []
  for r in records:
    key = dedup.exact_key(r["text"])
    if key not in seen:
      seen.add(key)
      distinct.append(r)
  lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
  parent = {r["id"]: r["id"] for r in distinct}

  def root(i):
    while parent[i] != i:
      i = parent[i]
    return i

  for r in distinct:
    sig = dedup.signature(r["text"], config)
    for other in lsh.query(sig):
      parent[root(other)] = root(r["id"])
    lsh.insert(r["id"], sig)
  groups = {}
  for i in parent:
    groups.setdefault(root(i), set()).add(i)
  return {frozenset(g) for g in groups.values() if len(g) > 1}


def test_band_sort_grouping_equals_datasketch_lsh():
  records = _planted_corpus()
  config = dedup.DedupConfig()
  result = dedup.dedup(records, config)
  near = {frozenset(c["members"]) for c in result.clusters if c["kind"] == "near"}
  assert near == _lsh_reference_components(records, config)
  assert len(near) >= 10 and result.exact_duplicates == 10  # the corpus really has both kinds


def test_jsonl_dedup_matches_in_memory_and_resumes(tmp_path, monkeypatch):
  records = _planted_corpus(seed=4)
  source = tmp_path / "records.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in records))
  config = dedup.DedupConfig(chunk_size=64, workers=2)
  expected = dedup.dedup(records, config)

  summary = dedup.dedup_jsonl(source, tmp_path / "out", config)
  kept = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").open()]
  assert [r["id"] for r in kept] == expected.keep
  assert kept[0] == next(r for r in records if r["id"] == kept[0]["id"])  # records carried whole
  found = [json.loads(line) for line in (tmp_path / "out" / "clusters.jsonl").open()]
  assert found == expected.clusters
  assert summary["kept"] == len(expected.keep) and summary["docs_in"] == len(records)
  assert summary == {**summary, **expected.summary()}

  # A run killed after some chunks: only the missing chunks are signed again.
  chunks = sorted((tmp_path / "out" / "signatures").glob("chunk-*.npz"))
  assert len(chunks) == -(-len(records) // 64)
  chunks[-1].unlink()
  signed = []
  original = dedup._Signer.__call__
  monkeypatch.setattr(dedup._Signer, "__call__",
                      lambda self, texts: signed.append(len(texts)) or original(self, texts))
  again = dedup.dedup_jsonl(source, tmp_path / "out", dedup.DedupConfig(chunk_size=64))
  assert again == summary and sum(signed) == len(records) - 64 * (len(chunks) - 1)
  # Other settings invalidate the stored signatures.
  signed.clear()
  dedup.dedup_jsonl(source, tmp_path / "out", dedup.DedupConfig(chunk_size=64, ngram=4))
  assert sum(signed) == len(records)


def test_jsonl_dedup_rejects_duplicate_ids_and_missing_fields(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_text('{"id": "a", "text": "x = 1"}\n{"id": "b", "text": "y = 2"}\n'
                  '{"id": "a", "text": "z = 3"}\n')
  with pytest.raises(ValueError, match="'a' appears more than once"):
    dedup.dedup_jsonl(path, tmp_path / "out")
  path.write_text('{"id": "a", "body": "x = 1"}\n')
  with pytest.raises(ValueError, match="record 0 has no `id` or no string `text`"):
    dedup.dedup_jsonl(path, tmp_path / "out2")
