"""Dedup on datatrove (exact + 4-stage MinHash with code tokens): quality on a planted corpus, the
standalone command's outputs, unreadable shards, and refusing to mix settings."""

import gzip
import json
import os
import random
import shutil

import pytest

from data_gen import shards
from data_gen.filtering import dedup

_NAMES = [f"{a}{b}" for a in ("get", "set", "load", "parse", "make", "read", "write", "check")
          for b in ("_item", "_value", "_node", "_path", "_size", "_key", "_row", "_spec")]


def _code(rng: random.Random, n_functions: int = 12) -> str:
  """A distinct, code-shaped file: functions over random identifiers, numbers and operators."""
  out = []
  for _ in range(n_functions):
    args = ", ".join(rng.sample(["x", "y", "n", "data", "key", "i", "j"], 2))
    out.append(f"def {rng.choice(_NAMES)}_{rng.randrange(10**6)}({args}):")
    for _ in range(rng.randint(3, 7)):
      v = f"v{rng.randrange(5000)}"
      out.append(f"    {v} = {rng.choice(_NAMES)}(w{rng.randrange(5000)}, {rng.randrange(100)}) "
                 f"{rng.choice('+-*')} w{rng.randrange(5000)}[{rng.randrange(10)}]")
    out.append(f"    return {v}\n")
  return "\n".join(out) + "\n"


def _replace_words(text: str, fraction: float, rng: random.Random) -> str:
  words = text.split(" ")
  for j in rng.sample(range(len(words)), max(1, round(fraction * len(words)))):
    words[j] = f"edit{rng.randrange(10**6)}"
  return " ".join(words)


def _record(rid: str, text: str) -> dict:
  return {"id": rid, "text": text, "source": "planted", "kind": "code", "python_ok": True,
          "meta": {"n": rid}}


def _write_input(path, records, n_shards=2):
  for r in range(n_shards):
    shards.write_shard(str(path), r, records[r::n_shards])
  shards.write_manifest(str(path), "test")


def _planted(seed=0, n_unique=300, n_near=120, n_exact=40):
  rng = random.Random(seed)
  unique = [_record(f"u{i}", _code(rng)) for i in range(n_unique)]
  near = [_record(f"near{k}", _replace_words(unique[k]["text"], 0.01, rng)) for k in range(n_near)]
  exact = [_record(f"copy{k}", unique[n_near + k]["text"].replace("\n", "  \n") + "\n\n")
           for k in range(n_exact)]  # trailing spaces and blank lines do not make a copy new
  records = unique + near + exact
  rng.shuffle(records)
  return records


def _run(tmp_path, records, *extra):
  _write_input(tmp_path / "in", records)
  rc = dedup.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                   "--tasks", "2", "--workers", "2", *extra])
  assert rc == 0
  return ({r["id"]: r for r in shards.read_records(str(tmp_path / "out" / "records"))},
          shards.read_records(str(tmp_path / "out" / "clusters")),
          json.loads((tmp_path / "out" / "summary.json").read_text()))


def test_planted_corpus_quality_and_outputs(tmp_path):
  records = _planted()
  kept, clusters, summary = _run(tmp_path, records)
  ids = set(kept)
  copies = [r for r in records if r["id"].startswith("copy")]
  near = [r for r in records if r["id"].startswith("near")]
  unique = [r for r in records if r["id"].startswith("u")]
  # Each near copy and its original form one cluster of which exactly one record stays.
  n_near = len(near)
  # exact copies: all removed (of a copy and its original, one stays: datatrove keeps either)
  assert all((c["id"] in ids) + (f"u{n_near + int(c['id'][4:])}" in ids) == 1 for c in copies)
  near_removed = sum((f"u{r['id'][4:]}" in ids) + (r["id"] in ids) == 1 for r in near)
  assert near_removed / len(near) >= 0.95, f"near-duplicate recall {near_removed}/{len(near)}"
  stands_in = {f"u{r['id'][4:]}": r["id"] for r in near}
  stands_in.update({f"u{n_near + int(c['id'][4:])}": c["id"] for c in copies})
  lost = [u for u in unique if u["id"] not in ids and stands_in.get(u["id"]) not in ids]
  assert len(lost) / len(unique) < 0.01, f"{len(lost)} unique files wrongly removed"
  # Records pass through whole; the summary counts them; the trainer reads the output directly.
  some = next(iter(kept.values()))
  assert some == next(r for r in records if r["id"] == some["id"])
  assert summary["docs_in"] == len(records) and summary["kept"] == len(kept)
  assert summary["exact_duplicates"] == len(copies)
  assert summary["near_duplicates"] == len(records) - len(copies) - len(kept)
  exact_clusters = {}
  for row in clusters:
    exact_clusters.setdefault(row["cluster"], []).append(row)
  assert all(sum(r["kept"] for r in rows) <= 1 for rows in exact_clusters.values())
  assert {r["id"] for r in clusters if not r["kept"]} == {r["id"] for r in records} - ids
  from phi1.data import records as trainer_records
  assert trainer_records.is_shard_directory(str(tmp_path / "out" / "records"))
  stats = trainer_records.SourceStats(path="x")
  docs = list(trainer_records.read_documents(str(tmp_path / "out" / "records"), stats))
  assert len(docs) == len(kept) and stats.problems == 0


def test_code_tokens_keep_punctuation_and_numbers():
  assert dedup.code_tokens("a[i] = b(0)") == ["a", "[", "i", "]", "=", "b", "(", "0", ")"]
  assert dedup.code_tokens("a = b") != dedup.code_tokens("a[i] = b(0)")
  assert dedup.normalise("x = 1  \r\n\r\n\ny = 2\n") == "x = 1\ny = 2"


def test_band_probability_and_defaults():
  config = dedup.DedupConfig()
  assert (config.ngram, config.bands, config.rows, config.num_perm) == (5, 14, 8, 112)
  assert dedup.band_collision_probability(0.685) == pytest.approx(0.5, abs=0.01)
  assert dedup.band_collision_probability(0.9) > 0.99


def test_unreadable_shard_is_reported_counted_and_skipped(tmp_path):
  rng = random.Random(1)
  records = [_record(f"u{i}", _code(rng, 3)) for i in range(40)]
  _write_input(tmp_path / "in", records, n_shards=4)
  damaged = tmp_path / "in" / "shard-00002.jsonl.gz"
  damaged.write_bytes(damaged.read_bytes()[:40])  # cut off mid-stream
  assert dedup.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                     "--tasks", "4", "--workers", "2"]) == 0
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["unreadable_shards"] == 1 and summary["kept"] == 30
  logs = "".join(p.read_text() for p in (tmp_path / "out" / "_engine").glob("*/logs/task_*.log"))
  assert f"{damaged}: unreadable shard" in logs  # each task's log says which shard, and why


def test_refuses_to_mix_settings_and_names_missing_input(tmp_path, capsys):
  rng = random.Random(2)
  _write_input(tmp_path / "in", [_record(f"u{i}", _code(rng, 2)) for i in range(10)])
  args = ["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tasks", "2",
          "--workers", "1"]
  assert dedup.main(args) == 0
  capsys.readouterr()
  assert dedup.main(args + ["--shingle", "4"]) == 2
  err = capsys.readouterr().err
  assert "ngram: 5 -> 4" in err and "delete" in err
  # The same shards elsewhere (copied with their times): the same run, not other settings; one
  # shard rewritten is.
  shutil.copytree(tmp_path / "in", tmp_path / "moved")
  moved = ["--input", str(tmp_path / "moved"), *args[2:]]
  assert dedup.main(moved) == 0
  shard = tmp_path / "moved" / "shard-00000.jsonl.gz"
  os.utime(shard, ns=(0, 1))  # rewritten in place: same bytes, another modification time
  capsys.readouterr()
  assert dedup.main(moved) == 2 and "input_fingerprint" in capsys.readouterr().err
  assert dedup.main(["--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
  assert "does not exist; expected finished record shards" in capsys.readouterr().err


def test_shards_are_deterministic_bytes(tmp_path):
  records = [_record("a", "x = 1\n"), _record("b", "y = 2\n")]
  one = shards.write_shard(str(tmp_path / "a"), 0, records)
  two = shards.write_shard(str(tmp_path / "b"), 0, iter(records))
  assert one == two
  with gzip.open(tmp_path / "a" / "shard-00000.jsonl.gz", "rt") as f:
    assert [json.loads(l)["id"] for l in f] == ["a", "b"]


def test_raw_jsonl_records_are_ingested_first(tmp_path, capsys):
  """A directory of plain .jsonl record files (no stage wrote it) is deduplicated as it is."""
  rng = random.Random(3)
  unique = [{"doc": f"d{i}", "body": _code(rng, 4)} for i in range(20)]
  copies = [{"doc": f"c{i}", "body": unique[i]["body"]} for i in range(5)]
  (tmp_path / "raw").mkdir()
  for f, rows in enumerate((unique[:10], unique[10:] + copies)):
    (tmp_path / "raw" / f"part-{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert dedup.main(["--input", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                     "--id-field", "doc", "--text-field", "body", "--tasks", "2",
                     "--workers", "1"]) == 0
  kept = {r["id"] for r in shards.read_records(str(tmp_path / "out" / "records"))}
  assert kept == {f"d{i}" for i in range(20)}
  assert json.loads(capsys.readouterr().out)["exact_duplicates"] == 5
  (tmp_path / "blank").mkdir()
  (tmp_path / "blank" / "r.jsonl").write_text(json.dumps({"id": "1", "text": ""}) + "\n")
  assert dedup.main(["--input", str(tmp_path / "blank"), "--out", str(tmp_path / "o2"),
                     "--tasks", "1"]) == 2
  assert "yielded 0 records" in capsys.readouterr().err
