"""Synthetic textbooks (phi-1 §2.2): explanation interleaved with runnable code, diversified by
constraining topic and audience (here the cell is topic x subtopic x audience x style, drawn from
data_gen/tables/textbooks.yaml).

    task = TextbookTask(load_table("textbooks"), seed=0)
    request, constraints = task.request(slot)   # deterministic in (seed, slot)
"""

import dataclasses
import hashlib
import random

from data_gen.llm import Completion, Request
from data_gen.tables import load_table, name_of, require, weighted
from data_gen.validate import check_textbook, run_hooks

SYSTEM = ("You are an expert computer science educator who writes clear, correct and engaging "
          "textbook material for learning to program in Python.")

PROMPT = """Write a section of a Python programming textbook about "{topic}: {subtopic}".
Audience: {audience}.
Form: {style}.

Requirements:
- Interleave natural-language explanation with short Python code snippets in ```python blocks.
- Every snippet must be valid, self-contained Python 3 that runs with the standard library only.
- After each snippet, explain what it shows and why it works; point out one subtle detail.
- Aim for about {words} words. Do not mention these instructions or the audience explicitly.
- Start with the content itself, not with a title like "Introduction"."""

LENGTHS = (300, 450, 600, 800)


def slot_seed(seed: int, slot: int, salt: str) -> int:
  """A 31-bit request seed, stable across Python versions and processes."""
  digest = hashlib.sha256(f"{salt}:{seed}:{slot}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def textbook_cells(table: dict) -> int:
  return (sum(len(t["subtopics"]) for t in table["topics"]) * len(table["audiences"])
          * len(table["styles"]))


@dataclasses.dataclass
class TextbookTask:
  table: dict = dataclasses.field(default_factory=lambda: load_table("textbooks"))
  seed: int = 0
  temperature: float = 1.0
  max_tokens: int = 2048
  min_chars: int = 400
  hooks: tuple = ()  # extra validation hooks: fields dict -> reject reason | None
  kind: str = "textbooks"

  def __post_init__(self):
    require(self.table, ["topics", "audiences", "styles"], "textbooks")

  def constraints(self, slot: int) -> dict:
    rng = random.Random(f"textbooks:{self.seed}:{slot}")
    topic = weighted(rng, self.table["topics"])
    return {"topic": topic["name"], "subtopic": rng.choice(topic["subtopics"]),
            "audience": name_of(weighted(rng, self.table["audiences"])),
            "style": name_of(weighted(rng, self.table["styles"])),
            "words": rng.choice(LENGTHS)}

  def request(self, slot: int) -> tuple[Request, dict]:
    c = self.constraints(slot)
    messages = ({"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT.format(**c)})
    params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
    return Request(messages=messages, params=params, seed=slot_seed(self.seed, slot, self.kind)), c

  async def check(self, completion: Completion, constraints: dict) -> dict | str:
    reason = check_textbook(completion.text, completion.finish_reason, self.min_chars)
    if reason:
      return reason
    fields = {"text": completion.text.strip() + "\n"}
    return run_hooks(self.hooks, fields) or fields
