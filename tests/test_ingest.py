"""Ingest: .py dirs, JSON lines, The Stack's Parquet, Q/A records, the default corpus, bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_gen.filtering import ingest
from phi1.data import rows


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
  assert list(rows.iter_rows(str(tmp_path / "o" / "r.jsonl"))) == records


# ------------------------------------------------------------------------------ real layouts
def _save_to_disk(path, table):
  """What `datasets.Dataset.save_to_disk` writes: Arrow IPC stream files + two JSON files."""
  path.mkdir()
  with pa.OSFile(str(path / "data-00000-of-00001.arrow"), "wb") as sink:
    with pa.ipc.new_stream(sink, table.schema) as writer:
      for batch in table.to_batches(max_chunksize=2):
        writer.write_batch(batch)
  (path / "dataset_info.json").write_text(json.dumps({"features": {}}))
  (path / "state.json").write_text(json.dumps(
      {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "train"}))


def test_datasets_save_to_disk_folder(tmp_path):
  _save_to_disk(tmp_path / "ds", pa.table({"id": ["a", "b", "c"],
                                           "content": ["x = 1\n", "def f(:\n", "y = 2\n"]}))
  records = list(ingest.iter_records(tmp_path / "ds"))
  assert [r["id"] for r in records] == ["a", "b", "c"]
  assert [r["python_ok"] for r in records] == [True, False, True]


def test_text_and_id_fields_and_json_files(tmp_path):
  src = tmp_path / "export"
  src.mkdir()
  (src / "part-0.json").write_text(json.dumps({"uid": "u1", "body_md": "Some text."}) + "\n")
  (src / "part-1.jsonl").write_text(json.dumps({"uid": "u2", "body_md": "More."}) + "\n")
  (src / "dataset_info.json").write_text("{}")    # metadata, not records
  records = list(ingest.iter_records(src, id_field="uid", text_field="body_md"))
  assert [(r["id"], r["text"]) for r in records] == [("u1", "Some text."), ("u2", "More.")]
  with pytest.raises(ValueError, match="--text-field 'nope'"):
    list(ingest.iter_records(src, id_field="uid", text_field="nope"))


def test_undecodable_bytes_and_surrogates_are_per_row(tmp_path):
  path = tmp_path / "mixed.jsonl"
  with open(path, "wb") as f:
    f.write(b'{"id": "1", "text": "ok"}\n')
    f.write(b'{"id": "2", "text": "caf\xe9"}\n')
    f.write(b'{"id": "3", "text": "x = \'\\udc80\'"}\n')
    f.write(b'{"id": "4", "text": "fine"}\n')
  stats = ingest.IngestStats()
  records = list(ingest.iter_records(path, stats=stats))
  assert [r["id"] for r in records] == ["1", "2", "3", "4"]
  assert (stats.replaced_undecodable, stats.replaced_surrogates) == (1, 1)
  from data_gen import shards
  shards.write_shard(str(tmp_path / "out"), 0, records)   # writable: no lone surrogate left
  assert [r["text"] for r in shards.read_shard(str(tmp_path / "out" / "shard-00000.jsonl.gz"))
          ][1:3] == ["caf\ufffd", "x = '\ufffd'"]


POSTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="3" Score="10" Title="Reverse a list?" Tags="&lt;python&gt;&lt;list&gt;" Body="&lt;p&gt;How do I reverse &lt;code&gt;xs&lt;/code&gt;?&lt;/p&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="25" Body="&lt;p&gt;Slice it:&lt;/p&gt;&lt;pre&gt;&lt;code&gt;def rev(xs):&#xA;    return xs[::-1]&#xA;&lt;/code&gt;&lt;/pre&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Score="4" Body="&lt;p&gt;Use &lt;code&gt;reversed&lt;/code&gt; &amp;amp; list.&lt;/p&gt;" />
  <row Id="4" PostTypeId="1" Score="1" Title="Unanswered" Body="&lt;p&gt;Anyone?&lt;/p&gt;" />
  <row Id="5" PostTypeId="2" ParentId="1" Score="-3" Body="&lt;p&gt;Wrong.&lt;/p&gt;" />
  <row Id="6" PostTypeId="1" Score="2" Title="Dicts" Body="&lt;p&gt;What is a dict? caf\xe9&lt;/p&gt;" />
  <row Id="7" PostTypeId="2" ParentId="6" Score="1" Body="&lt;p&gt;A hash map.&lt;/p&gt;" />
  <row Id="8" PostTypeId="2" ParentId="6" Score="1" Body="broken <markup" />
  <row Id="9" PostTypeId="5" Body="a tag wiki: not a post" />
</posts>
"""


def test_stack_exchange_posts_xml(tmp_path):
  (tmp_path / "Posts.xml").write_bytes(POSTS_XML.encode("latin-1"))   # one row not UTF-8
  stats = ingest.IngestStats()
  a, b = ingest.iter_records(tmp_path / "Posts.xml", stats=stats)
  assert (a["id"], a["kind"], b["id"]) == ("1", "qa", "6")
  # The accepted answer first (though not the best scored), then the others; negative dropped.
  assert a["text"] == ("Question: Reverse a list?\n\nHow do I reverse `xs`?\n\n"
                       "Answer: Use `reversed` & list.\n\n"
                       "Answer: Slice it:\n\n```\ndef rev(xs):\n    return xs[::-1]\n```")
  assert a["meta"]["answer_scores"] == [4, 25] and a["meta"]["score"] == 10
  assert a["meta"]["tags"] == ["python", "list"] and a["meta"]["accepted_kept"] is True
  assert b["text"].endswith("What is a dict? caf\ufffd\n\nAnswer: A hash map.")
  assert (stats.replaced_undecodable, stats.skipped_bad_xml, stats.skipped_unanswered) == (1, 1, 1)


def test_posts_xml_not_one_row_per_line_streams_through_iterparse(tmp_path):
  rows = [line.strip() for line in POSTS_XML.splitlines()[2:-1] if "broken" not in line]
  (tmp_path / "Posts.xml").write_text('<?xml version="1.0" encoding="utf-8"?><posts>'
                                      + "".join(rows) + "</posts>", encoding="utf-8")
  stats = ingest.IngestStats()
  a, b = ingest.iter_records(tmp_path / "Posts.xml", stats=stats)
  assert (a["id"], b["id"]) == ("1", "6") and "```\ndef rev(xs):" in a["text"]
  assert "caf\xe9" in b["text"] and stats.skipped_unanswered == 1


def test_question_answers_export(tmp_path):
  """The common Q&A export (stack-exchange-preferences): question + scored, selected answers."""
  path = tmp_path / "qa.jsonl"
  path.write_text(json.dumps({"qid": 7, "question": "<p>Sort a dict by value?</p>", "answers": [
      {"answer_id": 1, "text": "<p>Low.</p>", "pm_score": 0, "selected": False},
      {"answer_id": 2, "text": "<pre><code>sorted(d.items(), key=lambda kv: kv[1])\n</code></pre>",
       "pm_score": 9, "selected": True}]}) + "\n")
  (record,) = ingest.iter_records(path, id_field="qid")
  assert record["text"] == ("Question: Sort a dict by value?\n\nAnswer: ```\n"
                            "sorted(d.items(), key=lambda kv: kv[1])\n```\n\nAnswer: Low.")
  assert record["meta"]["answer_scores"] == [9, 0]


def test_no_input_is_an_error_naming_the_layouts(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"holds no input files; expected .*Posts.xml"):
    list(ingest.iter_records(tmp_path / "empty"))


def test_tasks_read_only_their_share(tmp_path):
  """4 tasks over 2 Parquet files (2 row groups each): every row is decoded once in total."""
  for f in range(2):
    pq.write_table(pa.table({"hexsha": [f"{f}-{i}" for i in range(40)],
                             "content": [f"x = {i}\n" for i in range(40)]}),
                   tmp_path / f"f{f}.parquet", row_group_size=20)
  decoded, ids = [], []
  for rank in range(4):
    step = ingest.IngestInputs(str(tmp_path))
    ids += [d.id for d in step.run(None, rank, 4)]
    decoded.append(step.stats["rows_read"].total)
  assert decoded == [20, 20, 20, 20] and sorted(ids) == sorted(f"{f}-{i}" for f in range(2)
                                                             for i in range(40))
  # The same for one plain JSON-lines file, cut into byte ranges.
  (tmp_path / "big").mkdir()
  (tmp_path / "big" / "a.jsonl").write_text("".join(
      json.dumps({"id": str(i), "text": f"y = {i}"}) + "\n" for i in range(100)))
  decoded, ids = [], []
  for rank in range(4):
    step = ingest.IngestInputs(str(tmp_path / "big"), piece_bytes=200)
    ids += [d.id for d in step.run(None, rank, 4)]
    decoded.append(step.stats["rows_read"].total)
  assert sum(decoded) == 100 and min(decoded) > 10 and ids == [str(i) for i in range(100)]
