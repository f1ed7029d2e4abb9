"""Synthetic textbooks (phi-1 §2.2): explanation interleaved with runnable code, diversified by
constraining topic and audience. A prompt's cell is (topic, subtopic, leaf, audience, style): topics
and subtopics from data_gen/tables/textbooks.yaml, leaves from the topic tree the model expanded from
them (data_gen/topic_tree.py). Topic weights are exact shares of the slots, and within a topic every
(leaf, audience, style) cell is used once before any repeats (data_gen/permutation.py). Three seed
words (tables/seed_words.txt, TinyStories / phi-1.5-style) steer the examples; their combination is
distinct for every slot, so no two prompts are the same. Snippets may use common libraries such as
numpy, as the paper's textbook example does (`stdlib_only=True`: standard library only).

    task = TextbookTask(load_table("textbooks"), tree=load_tree(path, table), seed=0)
    request, constraints = task.request(slot)   # deterministic in (seed, slot)
"""

import dataclasses
import math
import random

from phi1.llm.client import Completion, Request
from data_gen.permutation import Permutation, StratifiedAllocation, slot_seed
from data_gen.tables import load_table, load_words, name_of, require
from data_gen.topic_tree import leaves_by_topic, placeholder
from data_gen.validate import check_textbook, run_hooks

SYSTEM = ("You are an expert computer science educator who writes clear, correct and engaging "
          "textbook material for learning to program in Python.")

# Bump when PROMPT or the way constraints are drawn changes (recorded in the manifest; see
# data_gen/provenance.py).
PROMPT_VERSION = "textbooks-2"

PROMPT = """Write a section of a Python programming textbook about "{topic}: {subtopic}", focusing on {leaf}.
Audience: {audience}.
Form: {style}.

Requirements:
- Interleave natural-language explanation with short Python code snippets in ```python blocks.
- {libraries}
- After each snippet, explain what it shows and why it works; point out one subtle detail.
- Draw the examples from situations involving "{word1}", "{word2}" and "{word3}".
- Aim for about {words} words. Do not mention these instructions or the audience explicitly.
- Start with the content itself, not with a title like "Introduction"."""

LIBRARIES = ("Every snippet must be valid Python 3; use the standard library, or common libraries such "
             "as numpy where they fit the topic.")
STDLIB_ONLY = "Every snippet must be valid, self-contained Python 3 that runs with the standard library only."

LENGTHS = (300, 450, 600, 800)


def unrank_combination(index: int, n: int, k: int) -> list[int]:
  """The `index`-th k-subset of range(n) in colex order (combinatorial number system)."""
  if not 0 <= index < math.comb(n, k):
    raise IndexError(index)
  out = []
  for size in range(k, 0, -1):
    c = int((math.factorial(size) * index) ** (1 / size)) + size  # overshoot, then walk down
    while math.comb(c, size) > index:
      c -= 1
    out.append(c)
    index -= math.comb(c, size)
  return out[::-1]


def textbook_cells(table: dict, tree: dict | None = None, width: int = 32) -> int:
  tree = tree or placeholder(table, width)
  return (sum(len(leaves) for leaves in leaves_by_topic(table, tree)) * len(table["audiences"])
          * len(table["styles"]))


@dataclasses.dataclass
class TextbookTask:
  table: dict = dataclasses.field(default_factory=lambda: load_table("textbooks"))
  seed: int = 0
  temperature: float = 1.0
  max_tokens: int = 2048
  min_chars: int = 400
  hooks: tuple = ()  # extra validation hooks: fields dict -> reject reason | None
  tree: dict | None = None  # the expanded topic tree (None: placeholder leaves, for plans and tests)
  stdlib_only: bool = False
  keep_invalid: bool = False  # keep outputs that fail validation, flagged (the paper's unfiltered data)
  kind: str = "textbooks"

  def __post_init__(self):
    require(self.table, ["topics", "audiences", "styles"], "textbooks")
    self.tree = self.tree or placeholder(self.table, 32)
    self.leaves = leaves_by_topic(self.table, self.tree)
    self.audiences = [name_of(a) for a in self.table["audiences"]]
    self.styles = [name_of(s) for s in self.table["styles"]]
    cells = len(self.audiences) * len(self.styles)
    self.allocation = StratifiedAllocation([t.get("weight", 1) for t in self.table["topics"]],
                                           [len(leaves) * cells for leaves in self.leaves],
                                           f"textbooks:{self.seed}")
    self.seed_words = load_words("seed_words")
    self._word_triples = Permutation(math.comb(len(self.seed_words), 3), f"words:{self.seed}")

  def constraints(self, slot: int) -> dict:
    _, t, index = self.allocation(slot)
    index, style = divmod(index, len(self.styles))
    leaf, audience = divmod(index, len(self.audiences))
    subtopic, leaf = self.leaves[t][leaf]
    # Combinations run out after C(words, 3) ~ 1e10 slots; past that, triples start over.
    triple = self._word_triples(slot % self._word_triples.n)
    words = [self.seed_words[i] for i in unrank_combination(triple, len(self.seed_words), 3)]
    rng = random.Random(f"textbooks:{self.seed}:{slot}")
    return {"topic": self.table["topics"][t]["name"], "subtopic": subtopic, "leaf": leaf,
            "audience": self.audiences[audience], "style": self.styles[style],
            "seed_words": words, "words": rng.choice(LENGTHS)}

  def prompt(self, c: dict) -> str:
    w1, w2, w3 = c["seed_words"]
    return PROMPT.format(libraries=STDLIB_ONLY if self.stdlib_only else LIBRARIES, word1=w1,
                         word2=w2, word3=w3, **c)

  def request(self, slot: int) -> tuple[Request, dict]:
    c = self.constraints(slot)
    messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": self.prompt(c)})
    params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
    return Request(messages=messages, params=params, seed=slot_seed(self.seed, slot, self.kind)), c

  async def check(self, completion: Completion, constraints: dict) -> dict | str:
    reason = check_textbook(completion.text, completion.finish_reason, self.min_chars)
    if reason:
      return reason
    fields = {"text": completion.text.strip() + "\n"}
    return run_hooks(self.hooks, fields) or fields

  def invalid_fields(self, completion: Completion, constraints: dict) -> dict:
    """What `--keep-invalid` stores for an output that failed validation: the answer as it came."""
    return {"text": completion.text.strip() + "\n"}
