"""Ingest: .py dirs, JSON lines, The Stack's Parquet, Q/A records, the default corpus, bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_gen.filtering import ingest


def test_py_directory_counts_bad_files(tmp_path):
  src = tmp_path / "proj"
  (src / "pkg").mkdir(parents=True)
  (src / "pkg" / "good.py").write_text("def f(x):\n    return x + 1\n")
  (src / "bad.py").write_text("def f(:\n  pass\n")          # does not parse: kept, flagged
  (src / "blob.py").write_bytes(b"\x00\x01\x02binary")       # NUL bytes: skipped
  (src / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))  # not UTF-8: skipped
  (src / "huge.py").write_text("x = 1\n" * 1000)             # over max_bytes: skipped
  (src / "empty.py").write_text("\n")
  (src / "notes.txt").write_text("not python")
  stats = ingest.IngestStats()
  records = list(ingest.iter_records(src, max_bytes=1000, stats=stats))
  by_id = {r["id"]: r for r in records}
  assert set(by_id) == {"proj:pkg/good.py", "proj:bad.py"}
  assert by_id["proj:pkg/good.py"]["python_ok"] is True
  assert by_id["proj:bad.py"]["python_ok"] is False
  assert (stats.skipped_binary, stats.skipped_huge, stats.skipped_empty, stats.unparsable) == (2, 1, 1, 1)
  assert stats.records == 2 and stats.seen == 6


def test_jsonl_ids_required_or_assigned(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text(json.dumps({"text": "a = 1"}) + "\n" + json.dumps({"text": "b = 2"}) + "\n")
  with pytest.raises(ingest.MissingIdError, match="--id-field"):
    list(ingest.iter_records(path))
  ids = [r["id"] for r in ingest.iter_records(path, assign_ids=True)]
  assert ids == ["data.jsonl:0", "data.jsonl:1"]
  path.write_text(json.dumps({"uid": "u7", "text": "a = 1", "source": "synthetic",
                              "constraints": {"topic": "loops"}}) + "\n")
  (record,) = ingest.iter_records(path, id_field="uid")
  assert record["id"] == "u7" and record["source"] == "synthetic"
  assert record["meta"]["constraints"] == {"topic": "loops"} and record["python_ok"] is None


def test_the_stack_parquet_keeps_metadata(tmp_path):
  table = pa.table({"hexsha": ["abc", "def"], "content": ["import os\n", "def g(:\n"],
                    "max_stars_repo_name": ["o/r", "o/s"], "max_stars_repo_path": ["a.py", "b.py"],
                    "max_stars_repo_licenses": [["mit"], ["apache-2.0"]], "lang": ["Python"] * 2})
  pq.write_table(table, tmp_path / "stack.parquet")
  records = list(ingest.iter_records(tmp_path))  # a dir holding record files
  assert [r["id"] for r in records] == ["abc", "def"]
  assert records[0]["kind"] == "code" and records[0]["text"] == "import os\n"
  assert records[0]["meta"]["max_stars_repo_name"] == "o/r"
  assert records[0]["meta"]["max_stars_repo_licenses"] == ["mit"]
  assert [r["python_ok"] for r in records] == [True, False]


def test_question_answer_records(tmp_path):
  path = tmp_path / "so.jsonl"
  rows = [{"id": 1, "title": "Reverse a list?", "body": "How do I reverse?",
           "answers": [{"body": "Use xs[::-1]."}, {"body": "Or reversed(xs)."}], "tags": ["python"]},
          {"id": 2, "question": "What is a dict?", "answer": "A hash map."}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  a, b = ingest.iter_records(path)
  assert a["kind"] == "qa" and a["id"] == "1"
  assert a["text"].startswith("Question: Reverse a list?") and "Answer: Or reversed(xs)." in a["text"]
  assert a["meta"]["tags"] == ["python"]
  assert b["text"] == "Question: What is a dict?\n\nAnswer: A hash map."


def test_record_without_text_is_a_clear_error(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps({"id": "1", "body_text": "?"}) + "\n")
  with pytest.raises(ValueError, match="has no text"):
    list(ingest.iter_records(path))


def test_default_corpus_is_installed_python_and_parallel_matches_serial():
  serial = list(ingest.iter_records("default", limit=60))
  parallel = list(ingest.iter_records("default", limit=60, workers=2))
  assert [r["id"] for r in serial] == [r["id"] for r in parallel]
  assert all(r["id"].startswith("stdlib:") for r in serial)  # stdlib first, then site-packages
  assert sum(r["python_ok"] for r in serial) >= 55
  assert serial[0]["id"] == list(ingest.iter_records("stdlib", limit=1))[0]["id"]  # stable ids


def test_jsonl_roundtrip(tmp_path):
  records = [{"id": "a", "text": "é"}, {"id": "b", "text": "x"}]
  assert ingest.write_jsonl(records, tmp_path / "o" / "r.jsonl") == 2
  assert list(ingest.read_jsonl(tmp_path / "o" / "r.jsonl")) == records
