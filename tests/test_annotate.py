"""Annotation: the additive 0-5 prompt, score parsing, sampling, and calls through data_gen.llm to
a loopback OpenAI-compatible server."""

import pytest

from data_gen.filtering import annotate
from data_gen.testing import FakeOpenAI


def test_prompt_has_the_papers_criterion_and_the_extract():
  prompt = annotate.prompt_for("def f():\n    pass\n")
  assert "educational value for a student whose goal is to learn basic coding concepts" in prompt
  assert "def f():\n    pass" in prompt and "Educational score: <total points>" in prompt
  long = annotate.prompt_for("x" * 10_000)
  assert "[... truncated ...]" in long and len(long) < 10_000
  assert len(annotate.PROMPT_HASH) == 64


@pytest.mark.parametrize("answer,label", [
    ("Good code.\nEducational score: 4", 4),
    ("Educational score: 2 ... no wait. Educational score: 3", 3),
    ("**Educational score:** 5", 5),  # LLMs often bold the label
    ("educational SCORE:   0", 0),
    ("I cannot rate this.", None),
    ("Educational score: 7", None),
])
def test_parse_score(answer, label):
  got, rationale = annotate.parse_score(answer)
  assert got == label
  assert isinstance(rationale, str)


def test_sample_is_deterministic_order_free_and_nested():
  ids = [f"id{i}" for i in range(500)]
  small = annotate.sample_ids(ids, 50, seed=3)
  assert small == annotate.sample_ids(list(reversed(ids)), 50, seed=3)
  assert set(small) <= set(annotate.sample_ids(ids, 120, seed=3))
  assert small != annotate.sample_ids(ids, 50, seed=4)


def test_annotate_through_llm_layer_and_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  records = [{"id": "doc", "text": 'def f(x):\n    """Doubles x.\n\n    >>> f(2)\n    4\n    """\n'
                                   "    # multiply\n    return x * 2\n"},
             {"id": "cfg", "text": "A = 1\nB = 2\n"},
             {"id": "odd", "text": "UNRATEABLE"}]

  def responder(body):
    if "UNRATEABLE" in body["messages"][0]["content"]:
      return "No score here."
    return annotate.offline_judge(body)

  cache = str(tmp_path / "cache.sqlite")
  with FakeOpenAI(responder=responder) as server:
    labels, stats = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                           cache=cache)
    again, stats2 = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                           cache=cache)
  by_id = {l["id"]: l for l in labels}
  assert by_id["doc"]["label"] > by_id["cfg"]["label"]
  assert by_id["odd"]["label"] is None and by_id["odd"]["rationale"] == "No score here."
  for l in labels:
    assert l["model"] == "gpt-4" and l["prompt_hash"] == annotate.PROMPT_HASH
    assert len(l["request_hash"]) == 64 and not l["cached"]
  assert stats["requests"] == 3
  assert all(l["cached"] and l["cost_usd"] == 0.0 for l in again)
  assert stats2["requests"] == 0 and stats2["cache_hits"] == 3
  assert [l["label"] for l in again] == [l["label"] for l in labels]
