"""Canned answers of the fake server: deterministic in the request body (same body, same text) and
shaped like what the prompt asks for.

- a chat prompt containing "function named `NAME`": one ```python block defining NAME with type
  hints, a docstring and a body that runs (an exercise);
- "List N distinct ...": N short lines (a topic-tree expansion);
- the educational-value labelling prompt (data_gen.filtering.annotate): the rule-based
  `offline_judge`'s answer in the prompt's format, so `filter` can be rehearsed end to end;
- any other chat prompt: a textbook-style section (prose interleaved with ```python blocks that
  parse);
- /v1/completions: a function body.
"""

import hashlib
import json
import keyword
import random
import re

def body_hash(body: dict) -> str:
  """sha256 of the canonical JSON of a request body (sorted keys, compact separators, UTF-8)."""
  canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(canonical.encode()).hexdigest()


_WORDS = """algorithm array index value loop iterate condition branch function argument return
variable list tuple dictionary set string character integer float boolean recursion base case stack
queue heap tree node edge graph path search sort merge partition pivot binary linear complexity time
space memory pointer reference mutable immutable scope closure generator iterator exception error
input output file line token parse compute count total sum product maximum minimum average element
key pair order sequence slice window prefix suffix pattern match replace split join format print
test assert example result invariant loop-body step update initialise accumulate compare swap insert
remove append extend length size capacity bound limit range interval overlap intersection union
difference subset frequency histogram table matrix row column grid neighbour distance cost weight
dynamic programming memo cache greedy choice optimal solution problem subproblem decompose combine
careful simple clear efficient correct readable idiomatic explicit small large empty single nested
each every first last next previous current final initial given expected actual unique duplicate
sorted reversed shifted rotated balanced valid invalid even odd positive negative zero prime digit""".split()


def _sentences(rng: random.Random, count: int, low: int, high: int) -> list[str]:
  """`count` sentences of low..high words. All words come from one `choices` call: text
  generation was most of the server's CPU, and at 1,000+ requests/s on a 2-core machine the
  server's time per request adds to every request's latency."""
  lengths = [low + int((high - low + 1) * rng.random()) for _ in range(count)]
  words = rng.choices(_WORDS, k=sum(lengths))
  sentences, start = [], 0
  for n in lengths:
    sentences.append(" ".join(words[start:start + n]).capitalize() + ".")
    start += n
  return sentences


_NAME_WORDS = [w.replace("-", "_") for w in _WORDS if not keyword.iskeyword(w)]


def _identifier(rng: random.Random) -> str:
  return "_".join(rng.choices(_NAME_WORDS, k=2))


_BODIES = [
    ("values: list[int], k: int = {k}", "int",
     "    total = 0\n    for index, value in enumerate(values):\n        if value % {k} == {r}:\n"
     "            total += value * index\n    return total\n"),
    ("text: str", "dict[str, int]",
     "    counts: dict[str, int] = {{}}\n    for {v} in text.split():\n"
     "        counts[{v}] = counts.get({v}, 0) + {k}\n    return counts\n"),
    ("items: list[str], width: int = {k}", "list[str]",
     "    result = []\n    for {v} in items:\n        if len({v}) <= width:\n"
     "            result.append({v}.upper())\n    return sorted(result)\n"),
    ("n: int", "int",
     "    if n <= {r}:\n        return n\n    {v}_a, {v}_b = 0, 1\n    for _ in range(n):\n"
     "        {v}_a, {v}_b = {v}_b, ({v}_a + {v}_b) % {m}\n    return {v}_a\n"),
    ("grid: list[list[int]]", "int",
     "    best = 0\n    for row in grid:\n        {v} = 0\n        for cell in row:\n"
     "            {v} = max(cell, {v} + cell)\n            best = max(best, {v})\n    return best\n"),
]


def exercise_text(name: str, rng: random.Random) -> str:
  params, returns, body = rng.choice(_BODIES)
  fill = dict(k=rng.randint(2, 9), r=rng.randint(0, 1), m=rng.choice([97, 1009, 10007]),
              v=_identifier(rng))
  doc = "\n    ".join(_sentences(rng, rng.randint(2, 4), 8, 14))
  code = (f"def {name}({params.format(**fill)}) -> {returns}:\n"
          f'    """{doc}\n    """\n' + body.format(**fill))
  return f"```python\n{code}```\n"


def textbook_text(topic: str, rng: random.Random) -> str:
  parts = [f"## {topic}\n"]
  for _ in range(rng.randint(2, 4)):
    parts.append(" ".join(_sentences(rng, rng.randint(3, 5), 9, 16)))
    name, arg, k = _identifier(rng), _identifier(rng), rng.randint(2, 9)
    parts.append(f"```python\ndef {name}({arg}):\n    return [x * {k} for x in {arg} if x % {k}]\n\n"
                 f"print({name}({[int(100 * rng.random()) for _ in range(4)]}))\n```")
  return "\n\n".join(parts) + "\n"


def default_answer(body: dict, key: str | None = None) -> str:
  """The canned answer for a request body; `key` is its body_hash when the caller has it."""
  rng = random.Random(key or body_hash(body))
  if "messages" not in body:  # /v1/completions: continue a function whose signature is given
    return f"    {_identifier(rng)} = {rng.randint(0, 9)}\n    return {_identifier(rng)!r}\n"
  prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
  if "<extract>" in prompt and ("Educational value:" in prompt or "Educational score:" in prompt):
    from data_gen.filtering.annotate import offline_judge  # the labelling prompt's own format
    return offline_judge(body)
  match = re.search(r"function named `([A-Za-z_][A-Za-z0-9_]*)`", prompt)
  if match:
    return exercise_text(match.group(1), rng)
  match = re.search(r"List (\d+) distinct", prompt)
  if match:  # a topic-tree expansion: one short phrase per line
    return "\n".join(f"- {' '.join(rng.choices(_WORDS, k=rng.randint(2, 5)))}"
                     for _ in range(int(match.group(1)))) + "\n"
  topic = re.search(r'"([^"]{3,120})"', prompt)
  return textbook_text(topic.group(1) if topic else "Programming", rng)
