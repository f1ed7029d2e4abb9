"""`--plan`: repeat counts, expected tokens and cost, a prompt sample; nothing sent. The paper's
sizes are checked through the bijection that makes them exact (a full 1M-slot plan takes ~40 s)."""

import json
import math
import random

import pytest

from data_gen.__main__ import main
from data_gen.exercises import ExerciseTask
from data_gen.plan import plan
from phi1.llm.pricing import prices_for
from data_gen.runner import Slots
from data_gen.textbooks import TextbookTask

KEYS = {"requested", "distinct_prompts", "max_prompt_repeats", "distinct_cells", "max_cell_repeats",
        "expected_prompt_tokens", "expected_completion_tokens", "expected_cost_usd", "sample",
        "seconds"}


def test_plan_prints_one_json_line_and_writes_a_sample_without_a_key(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  for kind in ("exercises", "textbooks"):
    out = tmp_path / kind
    assert main([kind, "--n", "3000", "--out", str(out), "--model", "gpt-3.5-turbo", "--plan",
                 "--plan-sample", "7"]) == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert KEYS <= result.keys() and result["requested"] == 3000
    assert result["distinct_prompts"] == result["distinct_cells"] == 3000
    assert result["max_prompt_repeats"] == result["max_cell_repeats"] == 1
    sample = [json.loads(line) for line in open(result["sample"])]
    assert len(sample) == 7 and all(s["prompt"] for s in sample)
    price = prices_for("gpt-3.5-turbo")
    assert math.isclose(result["expected_cost_usd"], price.cost(result["expected_prompt_tokens"],
                                                                result["expected_completion_tokens"]),
                        abs_tol=0.01)
    assert not (out / "cache.sqlite").exists() and not (out / "manifest.json").exists()
  assert result["topic_tree"].startswith("topic tree not expanded yet")


def test_exercise_plan_counts_function_names():
  task = ExerciseTask(seed=0)
  result = plan(task, 2000, Slots(), prices=None, sample_path=None)
  assert result["distinct_function_names"] == 2000 and result["max_function_name_repeats"] == 1
  assert result["expected_cost_usd"] is None  # an unpriced model has no cost, not a made-up one
  # The paper's average exercise: 180M tokens / 879.5K.
  assert 200 < result["expected_tokens_per_record"] < 210


def test_plan_repeats_are_measured_not_assumed():
  table = {"topics": [{"name": "t", "subtopics": ["s"]}], "audiences": ["a"], "styles": ["x"]}
  task = TextbookTask(table, tree={"topics": {"t": {"s": ["leaf"]}}})
  result = plan(task, 5, Slots(), prices=None, sample_path=None)
  assert result["distinct_cells"] == 1 and result["max_cell_repeats"] == 5
  assert result["distinct_prompts"] == 5  # the seed words still make every prompt different


def test_paper_sizes_repeat_no_exercise_cell_and_no_textbook_prompt():
  exercises, textbooks = ExerciseTask(seed=0), TextbookTask(seed=0)
  # Within a round of the allocation no (topic, name) repeats, and a round holds more than the
  # paper's 879.5K exercises; textbooks' seed-word triples are a bijection over C(3989, 3) ~ 1e10.
  assert exercises.allocation.per_round >= 880_000
  assert textbooks._word_triples.n >= 1_000_000
  assert math.ceil(1_240_000 / textbooks.allocation.per_round) <= 3  # textbook cell repeats at 1B tokens
  rng = random.Random(0)
  slots = rng.sample(range(880_000), 4000)
  cells = {tuple(exercises.constraints(s)[k] for k in ("topic", "function_name")) for s in slots}
  assert len(cells) == len(slots)
  slots = rng.sample(range(1_000_000), 4000)
  prompts = {textbooks.request(s)[0].messages[1]["content"] for s in slots}
  assert len(prompts) == len(slots)


def test_shard_plan_covers_its_share_of_the_slots(tmp_path, capsys):
  assert main(["exercises", "--n", "1000", "--out", str(tmp_path), "--model", "m", "--plan",
               "--shard", "1/3"]) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert result["requested"] == 333 and result["shard"] == "1/3"
  assert (tmp_path / "rank-00001-of-00003" / "plan_sample.jsonl").exists()
  with pytest.raises(SystemExit) as exit_info:
    main(["exercises", "--n", "10", "--out", str(tmp_path), "--model", "m", "--plan", "--shard", "3/3"])
  assert exit_info.value.code == 2 and "0 <= I < W" in capsys.readouterr().err


def test_textbook_plan_uses_the_expanded_tree_when_there_is_one(tmp_path, capsys):
  from data_gen.topic_tree import write_tree
  (tmp_path / "table.yaml").write_text(
      "topics:\n  - {name: loops, subtopics: [for loops]}\naudiences: [a]\nstyles: [b, c]\n")
  write_tree(str(tmp_path / "tree.yaml"), {"topics": {"loops": {"for loops": ["x", "y", "z"]}}})
  assert main(["textbooks", "--n", "12", "--out", str(tmp_path / "out"), "--model", "m", "--plan",
               "--table", str(tmp_path / "table.yaml"), "--topic-tree", str(tmp_path / "tree.yaml")]) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert "topic_tree" not in result and result["cells_per_round"] == 6
  assert result["distinct_cells"] == 6 and result["max_cell_repeats"] == 2
  assert result["distinct_prompts"] == 12
