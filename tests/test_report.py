"""The diversity report on a generated corpus flags an injected 10% near-duplicate subset."""

import asyncio
import json
import random

import pytest

from data_gen.exercises import ExerciseTask
from phi1.llm.client import LLM
from data_gen.report import build_report, main, near_duplicates
from data_gen.runner import generate
from data_gen.shards import ShardWriter, read_records
from data_gen.testing import FakeOpenAI


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  with FakeOpenAI() as server:

    async def run():
      async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                     cache=str(root / "cache.sqlite")) as llm:
        with ShardWriter(str(root / "clean"), kind="exercises", shard_size=100) as writer:
          await generate(ExerciseTask(seed=11), llm, writer, 300, progress=False)

    asyncio.run(run())
  return root


def _near_copy(record: dict, rng: random.Random) -> dict:
  """A paraphrase-level copy: one word of the docstring changed, another id."""
  words = record["text"].split(" ")
  i = rng.randrange(len(words) // 3, len(words))
  words[i] = "changed"
  return {**record, "id": record["id"] + "-copy", "text": " ".join(words)}


def test_clean_corpus_is_not_flagged(corpus):
  report = build_report(str(corpus / "clean"))
  assert report["records"] == 300 and report["near_duplicates"]["rate"] < 0.01
  assert report["flags"] == []
  assert report["function_names"]["distinct"] >= 290
  assert report["cells"]["distinct"] >= 290 and report["cells"]["table_cells"] >= 10_000
  assert report["tokens"]["completion_tokens_total"] > 0
  ngrams = report["distinct_ngrams"]
  assert 0 < ngrams["distinct_1"] < ngrams["distinct_2"] < ngrams["distinct_4"] <= 1
  coverage = report["coverage"]
  assert coverage["topics_in_table"] == 24 and 20 <= coverage["topics_seen"] <= 24
  assert coverage["function_names_requested"] == 300 and coverage["max_records_per_function_name"] == 1
  assert coverage["function_names_in_space"] > 1_500_000
  words = report["lengths"]["words"]
  assert 0 < words["min"] <= words["p10"] <= words["p50"] <= words["p90"] <= words["max"]
  assert report["validity"] == {"invalid_kept": 0, "by_reason": {}}


def test_injected_ten_percent_near_duplicates_are_flagged(corpus, tmp_path):
  rng = random.Random(0)
  records = sorted(read_records(str(corpus / "clean")), key=lambda r: r["id"])
  copies = [_near_copy(r, rng) for r in rng.sample(records, 30)]  # 30 / 300 = 10%
  mixed = records + copies
  rng.shuffle(mixed)
  with ShardWriter(str(tmp_path / "mixed"), kind="exercises", shard_size=100) as writer:
    for r in mixed:
      writer.append(r)
  report = build_report(str(tmp_path / "mixed"))
  dups = report["near_duplicates"]
  assert any(f.startswith("near_duplicates") for f in report["flags"])
  # Each copy pairs with its original; whichever of the two comes later is the one flagged.
  pairs = [{c["id"], c["id"].removesuffix("-copy")} for c in copies]
  flagged = set(dups["ids"])
  assert dups["count"] == 30 and all(len(p & flagged) == 1 for p in pairs)


def test_repeated_text_lowers_distinct_ngrams():
  from data_gen.report import distinct_ngrams
  varied = [{"text": " ".join(f"w{i}_{j}" for j in range(50))} for i in range(20)]
  repeated = [{"text": " ".join(f"w{j}" for j in range(50))} for _ in range(20)]
  assert distinct_ngrams(varied)["distinct_3"] == 1.0
  assert distinct_ngrams(repeated)["distinct_3"] == 1 / 20


def test_sharded_output_is_reported_as_one_corpus(corpus, tmp_path):
  records = sorted(read_records(str(corpus / "clean")), key=lambda r: r["id"])
  for rank in range(2):
    with ShardWriter(str(tmp_path / f"rank-0000{rank}-of-00002"), kind="exercises") as writer:
      for r in records[rank::2]:
        writer.append(r)
  report = build_report(str(tmp_path))
  assert report["records"] == 300 and report["kind"] == "exercises"


def test_near_duplicates_threshold():
  a = {"id": "a", "text": " ".join(f"word{i}" for i in range(200))}
  b = {"id": "b", "text": a["text"].replace("word100", "other")}
  c = {"id": "c", "text": " ".join(f"token{i}" for i in range(200))}
  assert near_duplicates([a, b, c])["ids"] == ["b"]


def test_cli_writes_json_and_png(corpus, capsys):
  assert main([str(corpus / "clean")]) == 0
  printed = json.loads(capsys.readouterr().out)
  saved = json.load(open(corpus / "clean" / "report.json"))
  assert printed["records"] == saved["records"] == 300
  with open(corpus / "clean" / "report.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert main([str(corpus / "missing")]) == 2
