"""Synthetic textbooks: constraint tables, prompts, validation, records from a fault-free run."""

import asyncio
import collections

from phi1.llm.client import LLM, Completion
from data_gen.runner import generate
from data_gen.shards import ShardWriter, read_records
from data_gen.tables import load_table
from data_gen.testing import FakeOpenAI
from data_gen.textbooks import TextbookTask, textbook_cells
from data_gen.validate import check_textbook


def _completion(text, finish_reason="stop"):
  return Completion(text=text, finish_reason=finish_reason, prompt_tokens=1, completion_tokens=1,
                    cost_usd=0.0, cached=False, key="k", request_hash="h", model="m")


def test_default_table_has_over_10k_cells_and_sampling_follows_weights():
  table = load_table("textbooks")
  assert textbook_cells(table) >= 10_000
  task = TextbookTask(table, seed=0)
  topics = collections.Counter(task.constraints(i)["topic"] for i in range(4000))
  weights = {t["name"]: t["weight"] for t in table["topics"]}
  heavy = [t for t, w in weights.items() if w == 3]
  light = [t for t, w in weights.items() if w == 1]
  assert min(topics[t] for t in heavy) > max(topics[t] for t in light)
  assert len(topics) == len(table["topics"])


def test_requests_are_deterministic_per_slot_and_seed():
  a, b = TextbookTask(seed=0), TextbookTask(seed=1)
  assert a.request(5) == TextbookTask(seed=0).request(5)
  assert a.request(5)[0] != a.request(6)[0] and a.request(5)[0] != b.request(5)[0]
  request, c = a.request(5)
  prompt = request.messages[1]["content"]
  assert c["topic"] in prompt and c["subtopic"] in prompt and c["audience"] in prompt
  assert "```python" in prompt


def test_validation_reasons():
  good = "Some explanation. " * 40 + "\n```python\nprint(1)\n```\n"
  assert check_textbook(good, "stop", 400) is None
  assert check_textbook(good, "length", 400) == "truncated"
  assert check_textbook("short\n```python\nx = 1\n```", "stop", 400) == "too_short"
  assert check_textbook("Only prose. " * 80, "stop", 400) == "no_code"
  bad = "Some explanation. " * 40 + "\n```python\ndef f(:\n```\n"
  assert check_textbook(bad, "stop", 400) == "code_syntax_error"
  result = asyncio.run(TextbookTask().check(_completion(good), {}))
  assert result["text"].startswith("Some explanation.")
  no_print = TextbookTask(hooks=(lambda f: "uses_print" if "print(" in f["text"] else None,))
  assert asyncio.run(no_print.check(_completion(good), {})) == "uses_print"


def test_generated_records_carry_their_metadata(tmp_path):
  with FakeOpenAI(latency_s=0.001) as server:

    async def run():
      async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                     cache=str(tmp_path / "cache.sqlite")) as llm:
        with ShardWriter(str(tmp_path / "out"), kind="textbooks") as writer:
          return await generate(TextbookTask(seed=3), llm, writer, 40, progress=False)

    summary = asyncio.run(run())
  assert summary.ok and summary.stored == 40
  records = read_records(str(tmp_path / "out"))
  assert len(records) == 40 and len({r["id"] for r in records}) == 40
  for r in records:
    assert r["source"] == "synthetic_textbooks" and r["model"] == "gpt-4o-mini"
    assert set(r["constraints"]) >= {"topic", "subtopic", "audience", "style"}
    assert r["constraints"]["topic"].lower() in r["text"].lower()  # the fake echoes the topic
    assert len(r["prompt_hash"]) == 64 and r["usage"]["completion_tokens"] > 0
    assert check_textbook(r["text"], "stop", 400) is None


def test_full_disk_stops_cleanly_and_a_rerun_completes_without_repaying(tmp_path, monkeypatch):
  import errno
  with FakeOpenAI() as server:

    async def run(n, fail_after=None):
      async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                     cache=str(tmp_path / "cache.sqlite")) as llm:
        with ShardWriter(str(tmp_path / "out"), kind="textbooks", shard_size=7) as writer:
          if fail_after is not None:
            append = writer.append

            def append_until_full(record):
              if len(writer) >= fail_after:
                raise OSError(errno.ENOSPC, "No space left on device")
              append(record)

            monkeypatch.setattr(writer, "append", append_until_full)
          return await generate(TextbookTask(seed=5), llm, writer, n, progress=False)

    first = asyncio.run(run(30, fail_after=12))
    assert first.stopped == "disk full" and first.stored == 12
    monkeypatch.undo()
    second = asyncio.run(run(30))
    served = server.served_counts
  assert second.ok and second.stored == 30
  records = read_records(str(tmp_path / "out"))
  assert len(records) == 30 and len({r["id"] for r in records}) == 30
  assert max(served.values()) == 1  # the answer that hit the full disk came from the cache


def test_prompts_allow_numpy_by_default_and_stdlib_only_is_a_switch():
  default = TextbookTask(seed=0).request(3)[0].messages[1]["content"]
  strict = TextbookTask(seed=0, stdlib_only=True).request(3)[0].messages[1]["content"]
  assert "numpy" in default and "standard library only" not in default
  assert "standard library only" in strict and "numpy" not in strict


def test_every_prompt_carries_three_seed_words_from_the_shipped_list():
  from data_gen.tables import load_words
  vocabulary = set(load_words("seed_words"))
  task = TextbookTask(seed=0)
  triples = [task.constraints(s)["seed_words"] for s in range(3000)]
  assert all(len(set(t)) == 3 and set(t) <= vocabulary for t in triples)
  assert len({frozenset(t) for t in triples}) == 3000  # distinct sets, not only orderings
  prompt = task.request(0)[0].messages[1]["content"]
  assert all(f'"{w}"' in prompt for w in triples[0])


def test_keep_invalid_keeps_the_answer_flagged(tmp_path):
  bad = "Only prose, no code. " * 40
  with FakeOpenAI(responder=lambda body: bad) as server:

    async def run(keep):
      async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                     cache=str(tmp_path / "cache.sqlite")) as llm:
        with ShardWriter(str(tmp_path / f"out{keep}"), kind="textbooks") as writer:
          return await generate(TextbookTask(seed=3, keep_invalid=keep), llm, writer, 5,
                                progress=False, max_rejects=20)

    strict, kept = asyncio.run(run(False)), asyncio.run(run(True))
  assert strict.stored == 0 and strict.rejects["no_code"] > 20
  assert kept.ok and kept.invalid == {"no_code": 5}
  records = read_records(str(tmp_path / "outTrue"))
  assert [(r["valid"], r["invalid_reason"]) for r in records] == [(False, "no_code")] * 5
  assert records[0]["text"] == bad.strip() + "\n"
