"""The textbook topic tree: seed topics expanded once by the LLM itself, cached in a file to review.

Cosmopedia (and phi-1.5's 20K topics) seed generation with topics the generator lists itself: each
seed subtopic of data_gen/tables/textbooks.yaml is sent once with "list WIDTH distinct, specific
subtopics of ..."; the answers become the leaves of a three-level tree (topic > subtopic > leaf)
written as YAML next to the output (`OUT/topic_tree.yaml`), so a researcher can read and edit it
before paying for the textbooks. Its sha256 is part of every run's settings (data_gen/provenance.py).
The requests go through the same cache and budget as the textbooks, so expanding again is free.

    tree = await expand(llm, table, width=32, seed=0)
    write_tree(path, tree); tree = load_tree(path, table)
"""

import asyncio
import hashlib
import re

import yaml

from phi1 import atomic
from phi1.llm.client import Request
from data_gen.permutation import slot_seed

PROMPT = """List {width} distinct, specific subtopics of "{topic}: {subtopic}" that one section of a \
Python programming textbook could be about. One per line, each under ten words, no numbering and no \
commentary."""

_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])?\s*")


def seeds(table: dict) -> list[tuple[str, str]]:
  return [(t["name"], s) for t in table["topics"] for s in t["subtopics"]]


def request(topic: str, subtopic: str, width: int, seed: int) -> Request:
  content = PROMPT.format(width=width, topic=topic, subtopic=subtopic)
  return Request(messages=({"role": "user", "content": content},),
                 params={"temperature": 1.0, "max_tokens": 24 * width + 64},
                 seed=slot_seed(seed, 0, f"topic_tree:{topic}:{subtopic}"))


def parse_leaves(text: str, width: int) -> list[str]:
  """Lines of an answer as leaves: bullets and numbering stripped, duplicates (any case) dropped."""
  leaves, seen = [], set()
  for line in text.splitlines():
    leaf = _BULLET.sub("", line).strip().strip('"').strip().rstrip(".")
    if not leaf or len(leaf) > 120 or leaf.casefold() in seen:
      continue
    seen.add(leaf.casefold())
    leaves.append(leaf)
  return leaves[:width]


async def expand(llm, table: dict, width: int, seed: int) -> dict:
  """{topic: {subtopic: [leaves]}} from one request per seed subtopic. A seed whose answer has no
  usable line keeps itself as its only leaf (reported in the tree's `thin_seeds`)."""
  pairs = seeds(table)
  completions = await asyncio.gather(*[llm.complete(request(t, s, width, seed)) for t, s in pairs])
  tree: dict = {}
  thin = []
  for (topic, subtopic), completion in zip(pairs, completions):
    leaves = parse_leaves(completion.text, width)
    if not leaves:
      leaves = [subtopic]
      thin.append(f"{topic}: {subtopic}")
    tree.setdefault(topic, {})[subtopic] = leaves
  return {"model": llm.model, "width": width, "seed": seed, "table_sha256": table.get("_sha256"),
          "thin_seeds": thin, "topics": tree}


def placeholder(table: dict, width: int) -> dict:
  """A tree of the size an expansion would have, for `--plan` before any request is made."""
  return {"model": None, "width": width, "placeholder": True, "_sha256": None,
          "topics": {t["name"]: {s: [f"{s} (leaf {i + 1})" for i in range(width)]
                                 for s in t["subtopics"]} for t in table["topics"]}}


def write_tree(path: str, tree: dict):
  header = ("# Topic tree for synthetic textbooks: seed topics and subtopics from the constraint table,\n"
            "# leaves listed by the model below (data_gen/topic_tree.py). Review and edit freely: a\n"
            "# run records this file's sha256, and one made with another version is refused.\n")
  atomic.write_text(path, header + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True,
                                                  width=100))


def load_tree(path: str, table: dict) -> dict:
  """The tree at `path`, checked against the table: every seed subtopic needs at least one leaf."""
  with open(path, "rb") as f:
    data = f.read()
  tree = yaml.safe_load(data) or {}
  topics = tree.get("topics") or {}
  missing = [f"{t}: {s}" for t, s in seeds(table) if not (topics.get(t) or {}).get(s)]
  if missing:
    raise ValueError(f"topic tree {path} has no leaves for {len(missing)} seed subtopics of the "
                     f"table (first: {missing[0]!r}); delete it to expand again, or add them")
  tree["_sha256"] = hashlib.sha256(data).hexdigest()[:16]
  return tree


def leaves_by_topic(table: dict, tree: dict) -> list[list[tuple[str, str]]]:
  """For each table topic, its (subtopic, leaf) pairs in tree order."""
  return [[(s, leaf) for s in t["subtopics"] for leaf in tree["topics"][t["name"]][s]]
          for t in table["topics"]]
