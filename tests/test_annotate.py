"""Annotation: the paper's yes/no question (default) and the additive 0-5 prompt, label parsing,
sampling, calls through phi1.llm.client to a loopback OpenAI-compatible server, the cost printed as
labelling goes and the budget."""

import pytest

from data_gen.filtering import annotate
from data_gen.testing import FakeOpenAI


def test_prompts_have_the_papers_criterion_and_the_extract():
  binary = annotate.prompt_for("def f():\n    pass\n")  # the default: the paper's question
  assert "determine its educational value for a student whose goal is to learn basic coding " \
         "concepts" in binary.lower()
  assert "def f():\n    pass" in binary and '"Educational value: yes"' in binary
  additive = annotate.prompt_for("def f():\n    pass\n", "additive")
  assert annotate.CRITERION in additive and "Educational score: <total points>" in additive
  long = annotate.prompt_for("x" * 10_000)
  assert "[... truncated ...]" in long and len(long) < 10_000
  hashes = {s.prompt_hash for s in annotate.SCALES.values()}
  assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)


@pytest.mark.parametrize("answer,label", [
    ("Clear and small.\nEducational value: yes", 1),
    ("Educational value: yes... on reflection, Educational value: **no**", 0),
    ("EDUCATIONAL VALUE: No", 0),
    ("It depends.", None),
])
def test_parse_binary(answer, label):
  got, rationale = annotate.parse_label(answer)
  assert got == label and isinstance(rationale, str)


@pytest.mark.parametrize("answer,label", [
    ("Good code.\nEducational score: 4", 4),
    ("Educational score: 2 ... no wait. Educational score: 3", 3),
    ("**Educational score:** 5", 5),  # LLMs often bold the label
    ("educational SCORE:   0", 0),
    ("I cannot rate this.", None),
    ("Educational score: 7", None),
])
def test_parse_additive(answer, label):
  got, rationale = annotate.parse_label(answer, "additive")
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
                                           cache=cache, scale="additive")
    again, stats2 = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                           cache=cache, scale="additive")
  by_id = {l["id"]: l for l in labels}
  assert by_id["doc"]["label"] > by_id["cfg"]["label"]
  assert by_id["odd"]["label"] is None and by_id["odd"]["rationale"] == "No score here."
  for l in labels:
    assert l["model"] == "gpt-4" and l["prompt_hash"] == annotate.SCALES["additive"].prompt_hash
    assert len(l["request_hash"]) == 64 and not l["cached"]
  assert stats["requests"] == 3
  assert all(l["cached"] and l["cost_usd"] == 0.0 for l in again)
  assert stats2["requests"] == 0 and stats2["cache_hits"] == 3
  assert [l["label"] for l in again] == [l["label"] for l in labels]


def test_binary_labels_cost_printed_as_it_goes_and_budget(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  records = [{"id": f"r{i}", "text": f"def f{i}(x):\n    # doubles\n    return x * {i}\n"}
             for i in range(30)]
  with FakeOpenAI(responder=annotate.offline_judge) as server:
    labels, stats = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                           cache=str(tmp_path / "a.sqlite"), report_every_s=0.0)
    assert {l["label"] for l in labels} <= {0, 1} and all(l["scale"] == "binary" for l in labels)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("annotate: ")]
    assert len(lines) >= 30 and lines[-1].startswith("annotate: 30/30 labelled, $")
    assert stats["cost_usd"] > 0 and f"${stats['cost_usd']:.4f} spent" in lines[-1]
    # A budget smaller than the run: stops before passing it, says how far it got.
    # Each request reserves its worst case (prompt bytes + max_tokens) first: room for about 4.
    from phi1.llm.client import worst_case_tokens
    from phi1.llm.pricing import prices_for
    body = {"messages": [{"role": "user", "content": annotate.prompt_for(records[0]["text"])}],
            "max_tokens": 256}
    budget = 4.5 * prices_for("gpt-4").cost(*worst_case_tokens(body))
    assert budget < stats["cost_usd"]
    with pytest.raises(RuntimeError, match=r"budget-usd \$.* would be passed") as stopped:
      annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                             cache=str(tmp_path / "b.sqlite"), budget_usd=budget,
                             concurrency=1)
    assert "/30 labelled" in str(stopped.value) and "budget" in str(stopped.value)
    spent = float(str(stopped.value).split("$")[1].split(" ")[0])
    assert 0 < spent <= budget  # never past the budget


def test_unparsed_replies_are_counted_and_shown_on_the_console(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  records = [{"id": f"r{i}", "text": f"x = {i}\n"} for i in range(6)]

  def responder(body):
    if "x = 4" in body["messages"][0]["content"] or "x = 5" in body["messages"][0]["content"]:
      return annotate.offline_judge(body)
    return "Looks fine to me, nice code overall."

  with FakeOpenAI(responder=responder) as server:
    labels, stats = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                           cache=str(tmp_path / "c.sqlite"))
  assert stats["unparsed"] == 4 and len(stats["unparsed_examples"]) == 2
  err = capsys.readouterr().err
  line = next(l for l in err.splitlines() if "no 'Educational value: ...' answer" in l)
  assert line.startswith("annotate: 4 of 6 replies") and line.count("Looks fine to me") == 2


def test_a_rejected_record_is_skipped_counted_and_a_rerun_does_not_fail(tmp_path, monkeypatch,
                                                                        capsys):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  records = [{"id": f"r{i}", "text": f"def f{i}(x):\n    return x * {i}\n"} for i in range(8)]
  cache = str(tmp_path / "c.sqlite")
  # The first request is rejected (400 context_length_exceeded), every time it is sent.
  with FakeOpenAI(responder=annotate.offline_judge, first_faults=["context_length"]) as server:
    for _ in range(2):
      labels, stats = annotate.annotate_sync(records, model="gpt-4", base_url=server.base_url,
                                             cache=cache, concurrency=1)
      assert len(labels) == 7 and stats["rejected"] == {"context_length_exceeded": 1}
      assert "1 of 8 records skipped" in capsys.readouterr().err
    assert server.fault_counts == {"context_length": 2}  # asked again, skipped again
  # Past the allowed fraction (here every request), labelling fails with the reasons.
  with FakeOpenAI(fault_rate=1.0, faults=("invalid_value",)) as server:
    many = [{"id": f"m{i}", "text": f"y = {i}\n"} for i in range(12)]
    with pytest.raises(annotate.TooManyRejected, match="12 of 12 records rejected"):
      annotate.annotate_sync(many, model="gpt-4", base_url=server.base_url,
                             cache=str(tmp_path / "d.sqlite"))
