"""Annotate: LLM labels of educational value on a sample of the corpus, through data_gen/llm.py.

phi-1 §2.1: GPT-4 labelled ~100K samples of The Stack + StackOverflow with the prompt "determine its
educational value for a student whose goal is to learn basic coding concepts"; a classifier trained on
those labels filters the rest. The paper does not publish its prompt, so we use its criterion with
an additive 0-5 scale, the format FineWeb-Edu and Stack-Edu used (points accumulate per criterion,
which gives steadier labels than a holistic score). The answer ends with "Educational score: N".

Each label line stores: id, label (0-5, or null when the answer had no score), rationale, model (as
the server reported it), prompt_hash (sha256 of the template, so labels from different prompts are
never mixed silently), request_hash, cost_usd and cached. Calls go through `data_gen.llm.LLM`, so
reruns are free (content-addressed cache), rate limits and retries are handled, and cost is counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import re
from typing import Iterable, Sequence

PROMPT_TEMPLATE = """\
Below is an extract from a code file or a programming question-and-answer page. Judge its \
educational value for a student whose goal is to learn basic coding concepts, with the additive \
5-point system below. Points add up as each criterion is met:

- Add 1 point if the extract contains working-looking code, even if it is boilerplate, \
configuration, generated code or tied to one project, with little to teach.
- Add another point if the code exercises practical programming concepts (control flow, functions, \
data structures, algorithms), even without comments or explanation.
- Award a third point if a student could follow it on its own: meaningful names, comments or \
docstrings that say what and why, and not dominated by imports of a larger code base or by \
intricate configuration.
- Give a fourth point if it is well suited to teaching: self-contained, focused on one idea, with \
clear structure and explanation, like a good exercise or tutorial.
- Grant a fifth point if it is outstanding teaching material: clear reasoning explained step by \
step, well commented, like a page of an excellent textbook on coding.

The extract:
<extract>
{extract}
</extract>

After examining the extract:
- Briefly justify your total score in up to 100 words.
- Conclude with the score in the format: "Educational score: <total points>"\
"""

PROMPT_HASH = hashlib.sha256(PROMPT_TEMPLATE.encode()).hexdigest()
MAX_EXTRACT_CHARS = 6000   # ~1.5K tokens: enough to judge a file, bounds the cost of huge ones
_SCORE = re.compile(r"Educational score:\s*\**\s*([0-5])\b", re.I)


def prompt_for(text: str, max_chars: int = MAX_EXTRACT_CHARS) -> str:
  extract = text if len(text) <= max_chars else text[:max_chars] + "\n[... truncated ...]"
  return PROMPT_TEMPLATE.format(extract=extract)


def parse_score(answer: str) -> tuple[int | None, str]:
  """(score 0-5 or None, rationale): the last "Educational score: N" wins; the rest is rationale."""
  matches = list(_SCORE.finditer(answer))
  if not matches:
    return None, answer.strip()
  last = matches[-1]
  return int(last.group(1)), answer[:last.start()].strip()


def sample_ids(ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
  """A deterministic sample: the n ids with the smallest salted hash (independent of input order,
  and a larger n extends a smaller one, so growing the sample reuses every earlier label). Streams:
  memory holds the n best, not all 35M ids."""
  def rank(i: str) -> str:
    return hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
  return heapq.nsmallest(n, ids, key=rank)  # == sorted(ids, key=rank)[:n]


async def annotate(records: Sequence[dict], llm, *, max_tokens: int = 256,
                   temperature: float = 0.0, progress: bool = False) -> list[dict]:
  """One label dict per record (same order); `llm` is a `data_gen.llm.LLM`."""
  from data_gen.llm import Request

  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(records), desc="annotate", unit="doc")

  async def one(record: dict) -> dict:
    request = Request(messages=[{"role": "user", "content": prompt_for(record["text"])}],
                      params={"temperature": temperature, "max_tokens": max_tokens})
    completion = await llm.complete(request)
    label, rationale = parse_score(completion.text)
    if bar is not None:
      bar.update(1)
    return {"id": record["id"], "label": label, "rationale": rationale, "model": completion.model,
            "prompt_hash": PROMPT_HASH, "request_hash": completion.request_hash,
            "cost_usd": completion.cost_usd, "cached": completion.cached}

  try:
    return list(await asyncio.gather(*(one(r) for r in records)))
  finally:
    if bar is not None:
      bar.close()


def annotate_sync(records: Sequence[dict], *, model: str, base_url: str | None = None,
                  api_key: str | None = None, cache: str | None = None, concurrency: int = 16,
                  progress: bool = False, **kwargs) -> tuple[list[dict], dict]:
  """Runs `annotate` on a fresh event loop; returns (labels, LLM stats incl. cost)."""
  from data_gen.llm import LLM

  async def run():
    llm = LLM(model, base_url=base_url, api_key=api_key, cache=cache, concurrency=concurrency)
    try:
      labels = await annotate(records, llm, progress=progress, **kwargs)
      return labels, llm.stats.as_dict()
    finally:
      await llm.aclose()

  return asyncio.run(run())


def offline_judge(body: dict) -> str:
  """A rule-based stand-in for the LLM judge, answering the prompt above in its format.

  For tests, benchmarks and dry runs with `data_gen.testing.FakeOpenAI(responder=offline_judge)`:
  it rewards what the prompt's criteria reward (code, functions and control flow, docstrings and
  comments, small self-contained files, doctest-style examples), so a classifier has a learnable
  signal. It is not a substitute for a real judge's labels.
  """
  prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
  match = re.search(r"<extract>\n(.*)\n</extract>", prompt, re.S)
  text = match.group(1) if match else prompt
  lines = [l for l in text.splitlines() if l.strip()]
  n = max(len(lines), 1)
  comments = sum(l.lstrip().startswith("#") for l in lines) + 3 * text.count('"""')
  defs = len(re.findall(r"^\s*(?:async\s+)?def\s", text, re.M))
  checks = [
      ("contains code", bool(re.search(r"^\s*(def|class|import|from|for|if|while)\b|=", text, re.M))),
      ("uses functions or control flow", defs > 0 and bool(re.search(r"\b(for|while|if)\b", text))),
      ("explained by docstrings/comments", comments / n >= 0.15),
      ("small and self-contained", n <= 150 and text.count("import ") <= 3),
      ("teaches by example", ">>>" in text or comments / n >= 0.3),
  ]
  score = sum(ok for _, ok in checks)
  reasons = "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in checks)
  return f"{reasons}.\nEducational score: {score}"
