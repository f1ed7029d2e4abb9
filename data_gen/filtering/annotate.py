"""Annotate: LLM labels of educational value on a sample of the corpus, through phi1/llm/client.py.

phi-1 §2.1: GPT-4 labelled ~100K samples of The Stack + StackOverflow, prompted to "determine its
educational value for a student whose goal is to learn basic coding concepts"; a classifier trained
on those labels filters the rest. The paper does not publish its prompt or answer format. Two
scales (`SCALES`):
- "binary" (default): the paper's question as asked, answered "Educational value: yes|no" -> 1/0;
- "additive": the same criterion on an additive 0-5 scale, the format FineWeb-Edu and Stack-Edu
  used (points accumulate per criterion), answered "Educational score: N".
Either answer is preceded by a short justification.

Each label line stores: id, label (0/1 or 0-5, or null when the answer had none), rationale, model
(as the server reported it), scale, prompt_hash (sha256 of the template, so labels from different
prompts are never mixed silently), request_hash, cost_usd and cached. Calls go through
`phi1.llm.client.LLM`, so reruns are free (content-addressed cache), rate limits and retries are
handled, cost is counted, printed as labelling goes, and capped by `budget_usd`.

A record the endpoint rejects on its own (a 400 such as context_length_exceeded, or a refusal) gets
no label line: it is skipped and counted by reason (stats["rejected"], printed), and labelling goes
on; a rerun skips it again rather than failing. Labelling fails only when more than
`max_rejected_fraction` of the sample (and at least 10 records) is rejected. Replies with no
answer in the scale's format are kept with label null, and their count and two examples are
printed (stats["unparsed"], stats["unparsed_examples"]).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import re
import sys
import time
from typing import Iterable, Sequence

CRITERION = "educational value for a student whose goal is to learn basic coding concepts"

BINARY_TEMPLATE = """\
Below is an extract from a code file or a programming question-and-answer page. Determine its \
educational value for a student whose goal is to learn basic coding concepts.

The extract:
<extract>
{extract}
</extract>

Does the extract have educational value for such a student? Briefly justify your answer in up to \
100 words, then conclude with "Educational value: yes" or "Educational value: no".\
"""

ADDITIVE_TEMPLATE = """\
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


@dataclasses.dataclass(frozen=True)
class Scale:
  name: str
  template: str
  answer: re.Pattern          # the last match is the label
  values: dict[str, int]      # matched text (lower-case) -> label
  positive_label: int         # labels >= this count as educational for the classifier

  @property
  def prompt_hash(self) -> str:
    return hashlib.sha256(self.template.encode()).hexdigest()

  @property
  def n_labels(self) -> int:
    return max(self.values.values()) + 1


SCALES = {
    "binary": Scale("binary", BINARY_TEMPLATE,
                    re.compile(r"Educational value:\s*\**\s*(yes|no)\b", re.I), {"yes": 1, "no": 0}, 1),
    # 3 of 0-5: FineWeb-Edu's cut.
    "additive": Scale("additive", ADDITIVE_TEMPLATE,
                      re.compile(r"Educational score:\s*\**\s*([0-5])\b", re.I),
                      {str(i): i for i in range(6)}, 3),
}
DEFAULT_SCALE = "binary"
MAX_EXTRACT_CHARS = 6000   # ~1.5K tokens: enough to judge a file, bounds the cost of huge ones


def prompt_for(text: str, scale: str = DEFAULT_SCALE, max_chars: int = MAX_EXTRACT_CHARS) -> str:
  extract = text if len(text) <= max_chars else text[:max_chars] + "\n[... truncated ...]"
  return SCALES[scale].template.format(extract=extract)


def parse_label(answer: str, scale: str = DEFAULT_SCALE) -> tuple[int | None, str]:
  """(label or None, rationale): the scale's last answer line wins; the rest is rationale."""
  spec = SCALES[scale]
  matches = list(spec.answer.finditer(answer))
  if not matches:
    return None, answer.strip()
  last = matches[-1]
  return spec.values[last.group(1).lower()], answer[:last.start()].strip()


def sample_ids(ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
  """A deterministic sample: the n ids with the smallest salted hash (independent of input order,
  and a larger n extends a smaller one, so growing the sample reuses every earlier label). Streams:
  memory holds the n best, not all 35M ids."""
  def rank(i: str) -> str:
    return hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
  return heapq.nsmallest(n, ids, key=rank)  # == sorted(ids, key=rank)[:n]


class CostReport:
  """Prints labelling progress and cost to stderr every `every_s` seconds (and at the end), as
  `textbooks` shows its cost: a 100K-label run is hours of paid requests."""

  def __init__(self, total: int, llm, budget_usd: float | None, every_s: float = 10.0,
               stream=None):
    self.total, self.llm, self.budget_usd, self.every_s = total, llm, budget_usd, every_s
    self.stream = stream if stream is not None else sys.stderr
    self.done, self.last = 0, time.monotonic()

  def line(self) -> str:
    s = self.llm.stats
    budget = f" of ${self.budget_usd:.2f} budget" if self.budget_usd is not None else ""
    return (f"annotate: {self.done}/{self.total} labelled, ${s.cost_usd:.4f} spent{budget} "
            f"({s.cache_hits} cached, {s.requests} requests)")

  def update(self, n: int = 1) -> None:
    self.done += n
    if time.monotonic() - self.last >= self.every_s:
      self.last = time.monotonic()
      print(self.line(), file=self.stream, flush=True)


class BudgetSpent(RuntimeError):
  """Some records were not labelled: the next request could have passed the budget."""


MAX_REJECTED_FRACTION = 0.01


class TooManyRejected(RuntimeError):
  pass


async def annotate(records: Sequence[dict], llm, *, scale: str = DEFAULT_SCALE,
                   max_tokens: int = 256, temperature: float = 0.0, progress: bool = False,
                   report: CostReport | None = None,
                   max_rejected_fraction: float = MAX_REJECTED_FRACTION) -> list[dict]:
  """One label dict per record (same order) except the records the endpoint rejected (counted in
  `llm.stats.rejected`); `llm` is a `phi1.llm.client.LLM`. Requests the budget refuses do not stop
  the ones in flight (they are paid for and cached); BudgetSpent then says how many were refused."""
  from phi1.llm.client import BudgetExhausted, Request, RequestRejected

  spec = SCALES[scale]
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(records), desc="annotate", unit="doc")

  async def one(record: dict) -> dict:
    request = Request(messages=[{"role": "user", "content": prompt_for(record["text"], scale)}],
                      params={"temperature": temperature, "max_tokens": max_tokens})
    try:
      completion = await llm.complete(request)
    except BudgetExhausted:
      return None
    except RequestRejected:  # this record only (counted by reason in llm.stats.rejected)
      if report is not None:
        report.update()
      return "rejected"
    label, rationale = parse_label(completion.text, scale)
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(f"${llm.stats.cost_usd:.4f}")
    if report is not None:
      report.update()
    return {"id": record["id"], "label": label, "rationale": rationale, "model": completion.model,
            "scale": scale, "prompt_hash": spec.prompt_hash,
            "request_hash": completion.request_hash, "cost_usd": completion.cost_usd,
            "cached": completion.cached}

  try:
    labels = list(await asyncio.gather(*(one(r) for r in records)))
  finally:
    if bar is not None:
      bar.close()
  refused = sum(l is None for l in labels)
  if refused:
    raise BudgetSpent(f"{refused} of {len(records)} records not labelled")
  rejected = sum(l == "rejected" for l in labels)
  if rejected > max(10, int(max_rejected_fraction * len(records))):
    raise TooManyRejected(f"{rejected} of {len(records)} records rejected by the endpoint "
                          f"{dict(llm.stats.rejected)}, more than the {max_rejected_fraction} "
                          "allowed: check the model and max_tokens")
  return [l for l in labels if l != "rejected"]


def problems_line(labels: Sequence[dict], stats: dict, total: int, scale: str) -> str | None:
  """The console line for rejected records and replies without a label (None when neither)."""
  parts = []
  if stats.get("rejected"):
    parts.append(f"{sum(stats['rejected'].values())} of {total} records skipped (rejected by the "
                 f"endpoint: {dict(stats['rejected'])})")
  unparsed = [l for l in labels if l["label"] is None]
  if unparsed:
    examples = "; ".join(repr(l["rationale"][-80:]) for l in unparsed[:2])
    answer = "Educational value" if scale == "binary" else "Educational score"
    parts.append(f"{len(unparsed)} of {len(labels)} replies had no '{answer}: ...' answer and are "
                 f"kept unlabelled (e.g. {examples})")
  return "annotate: " + "; ".join(parts) if parts else None


def annotate_sync(records: Sequence[dict], *, model: str, base_url: str | None = None,
                  api_key: str | None = None, cache: str | None = None, concurrency: int = 16,
                  progress: bool = False, scale: str = DEFAULT_SCALE,
                  budget_usd: float | None = None, prices=None, report_every_s: float = 10.0,
                  max_tokens_param: str | None = None, **kwargs) -> tuple[list[dict], dict]:
  """Runs `annotate` on a fresh event loop; returns (labels, LLM stats incl. cost). With
  `budget_usd`, new requests stop before the spend could pass it (cached answers are free) and a
  RuntimeError says how far labelling got; rerunning with a larger budget pays only for the rest."""
  from phi1.llm.client import LLM, Budget

  async def run():
    llm = LLM(model, base_url=base_url, api_key=api_key, cache=cache, concurrency=concurrency,
              prices=prices, budget=Budget(budget_usd) if budget_usd is not None else None,
              max_tokens_param=max_tokens_param)
    report = CostReport(len(records), llm, budget_usd, every_s=report_every_s)
    try:
      labels = await annotate(records, llm, scale=scale, progress=progress, report=report, **kwargs)
      print(report.line(), file=sys.stderr, flush=True)
      stats = llm.stats.as_dict()
      unparsed = [l for l in labels if l["label"] is None]
      stats["unparsed"] = len(unparsed)
      stats["unparsed_examples"] = [l["rationale"][-200:] for l in unparsed[:2]]
      problems = problems_line(labels, stats, len(records), scale)
      if problems:
        print(problems, file=sys.stderr, flush=True)
      return labels, stats
    except BudgetSpent as e:
      raise RuntimeError(f"{report.line()}; {e}: the --budget-usd ${budget_usd:.2f} would be "
                         "passed by the next request; raise it and rerun (answers so far are "
                         "cached and free)") from None
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
  if "Educational value: yes" in prompt:  # the binary question: yes at the additive cut
    return f"{reasons}.\nEducational value: {'yes' if score >= 3 else 'no'}"
  return f"{reasons}.\nEducational score: {score}"
