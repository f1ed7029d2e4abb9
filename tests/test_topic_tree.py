"""The topic tree: expanded once by the model from the table's seeds, written for review, reused."""

import asyncio

import pytest
import yaml

from phi1.llm.client import LLM
from data_gen.testing import FakeOpenAI
from data_gen.textbooks import TextbookTask
from data_gen.topic_tree import expand, leaves_by_topic, load_tree, parse_leaves, write_tree

TABLE = {"topics": [{"name": "loops", "weight": 2, "subtopics": ["for loops", "while loops"]},
                    {"name": "recursion", "weight": 1, "subtopics": ["base cases"]}],
         "audiences": ["a student", "a teacher"], "styles": ["a tutorial"], "_sha256": "t"}


def test_parse_leaves_strips_numbering_and_duplicates():
  text = "1. Counting down\n- counting down\n* Nested loops.\n\n2) \"Loop else\"\n" + "x" * 200
  assert parse_leaves(text, 10) == ["Counting down", "Nested loops", "Loop else"]
  assert parse_leaves(text, 2) == ["Counting down", "Nested loops"]


def test_expand_writes_a_reviewable_tree_that_textbooks_use(tmp_path):
  with FakeOpenAI() as server:

    async def run():
      async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                     cache=str(tmp_path / "cache.sqlite")) as llm:
        return await expand(llm, TABLE, width=5, seed=0), await expand(llm, TABLE, width=5, seed=0)

    tree, again = asyncio.run(run())
    served = sum(server.served_counts.values())
  assert served == 3 and tree == again  # one request per seed subtopic; the second time is cached
  assert [len(v) for t in tree["topics"].values() for v in t.values()] == [5, 5, 5]
  path = str(tmp_path / "topic_tree.yaml")
  write_tree(path, tree)
  text = open(path).read()
  assert text.startswith("# Topic tree") and yaml.safe_load(text)["topics"] == tree["topics"]
  loaded = load_tree(path, TABLE)
  assert [len(x) for x in leaves_by_topic(TABLE, loaded)] == [10, 5]
  task = TextbookTask(TABLE, tree=loaded, seed=0)
  cells = {tuple(task.constraints(s)[k] for k in ("subtopic", "leaf", "audience", "style"))
           for s in range(task.allocation.per_round)}
  # cells per topic: 10 x 2 x 1 and 5 x 2 x 1; block min(20 // 2, 10 // 1) = 10, x (2 + 1)
  assert len(cells) == task.allocation.per_round == 30
  leaf = task.constraints(0)["leaf"]
  assert f"focusing on {leaf}" in task.request(0)[0].messages[1]["content"]
  # An edited tree is a different tree (its hash is part of the run's settings).
  with open(path, "a") as f:
    f.write("# reviewed\n")
  assert load_tree(path, TABLE)["_sha256"] != loaded["_sha256"]


def test_a_tree_missing_a_seed_is_refused(tmp_path):
  path = str(tmp_path / "tree.yaml")
  write_tree(path, {"topics": {"loops": {"for loops": ["a"], "while loops": ["b"]}}})
  with pytest.raises(ValueError, match="no leaves for 1 seed subtopics.*recursion: base cases"):
    load_tree(path, TABLE)
