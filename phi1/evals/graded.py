"""Graded problems (paper §4): completions scored 0-10 by an LLM grader against a rubric.

The paper's 50 new problems, unlike HumanEval's and graded by GPT-4 (Table 2: phi-1 52%, phi-1-small
45%, phi-1-base 37%, StarCoder 51%), are not public. We ship ten original problems in that spirit
(phi1/evals/data/graded_problems.jsonl: id, prompt, reference, test, rubric), each reference
checked against its test in the sandbox by the tests; bring your own with --problems FILE (JSONL:
id, prompt, and a reference and/or rubric notes; `test` optional).

    phi1 eval --bench graded --checkpoint runs/phi1 --grader-model gpt-4 [--grader-base-url URL]
    phi1 eval --bench graded --problems mine.jsonl --openai-base-url URL --model M --grader-model G

The model continues each prompt (HumanEval's format: signature + docstring). Each completion goes to
an OpenAI-compatible grader through phi1.llm, the client data_gen uses too: the response cache
(--out/grader_cache.sqlite: a rerun pays nothing for grades it has), a USD budget
(--grader-budget-usd), retries with backoff.
The grader sees the problem, the reference, the rubric notes and the student's solution, and ends
its reply with "Score: N" (0-10; temperature 0). The score is the mean over completions, as a
percentage (Table 2's unit). Problems with a test are also executed: pass@1 is reported beside it.
"""

import asyncio
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence

from phi1.evals import postprocess
from phi1.evals.task import Benchmark, Task

GRADER_TEMPLATE = """You are a teacher grading a student's solution to a Python coding problem.

Problem (the student completes this code):
```python
{prompt}```

A reference solution (other correct solutions are possible):
```python
{prompt}{reference}```

Rubric notes: {rubric}

The student's solution:
```python
{prompt}{completion}```

Grade the student's solution from 0 to 10: 10 = correct, complete and clear; partial credit for a
right approach with mistakes; 0 = wrong, empty or unrelated. Follow the rubric notes. Give one or two
sentences of reasoning, then a last line of the form "Score: N"."""
SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.I)
GRADER_PARAMS = {"temperature": 0.0, "max_tokens": 400}


def default_path() -> str:
  return os.path.join(os.path.dirname(__file__), "data", "graded_problems.jsonl")


def load(path: str | None = None) -> tuple[list[Task], dict[str, str]]:
  """(tasks, rubric notes by task id). A row needs id, prompt, and a reference or rubric."""
  path = path or default_path()
  tasks, rubrics = [], {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if "id" not in row or "prompt" not in row or not (row.get("reference") or row.get("rubric")):
        raise ValueError(f"{path}:{number}: a graded problem needs id, prompt, and a reference "
                         "solution or rubric notes")
      task_id = str(row["id"])
      if task_id in rubrics:
        raise ValueError(f"{path}:{number}: duplicate id {task_id!r}")
      tasks.append(Task(task_id=task_id, prompt=row["prompt"], prefix=row["prompt"],
                        test=row.get("test") or "", reference=row.get("reference") or ""))
      rubrics[task_id] = row.get("rubric") or ""
  if not tasks:
    raise ValueError(f"{path} holds no problems")
  return tasks, rubrics


def parse_score(reply: str) -> float | None:
  """The last "Score: N" of a reply, clamped to [0, 10]; None when there is none."""
  found = SCORE.findall(reply)
  return None if not found else min(10.0, max(0.0, float(found[-1])))


def grader_prompt(task: Task, rubric: str, completion: str) -> str:
  return GRADER_TEMPLATE.format(prompt=task.prompt, reference=task.reference or "(none given)\n",
                                rubric=rubric or "(none)", completion=completion)


def grade(tasks: Sequence[Task], rubrics: dict[str, str], samples, *, model: str,
          base_url: str | None, cache: str | None, budget_usd: float | None = None,
          max_attempts: int = 6, concurrency: int = 8) -> list[dict]:
  """One row per sample: task_id, sample_id, score (None if the reply had none), reply, cached."""
  from phi1.llm import client as llm_lib  # the one cache / budget / retry implementation
  from phi1.evals.api_generator import GenerationFailed, first_failure_cancels, retry_policy
  by_id = {t.task_id: t for t in tasks}

  async def run():
    budget = llm_lib.Budget(budget_usd) if budget_usd is not None else None
    llm = llm_lib.LLM(model, base_url=base_url, concurrency=concurrency, cache=cache,
                      budget=budget, retry=retry_policy(max_attempts),
                      api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY")

    # A request reserves its worst-case cost before it is sent; letting only `concurrency` of them
    # reserve at a time keeps the budget from being held by requests still waiting for a slot.
    slots = asyncio.Semaphore(concurrency)

    async def one(sample):
      request = llm_lib.Request(messages=[{"role": "user", "content": grader_prompt(
          by_id[sample.task_id], rubrics.get(sample.task_id, ""), sample.completion)}],
          params=GRADER_PARAMS, seed=0)
      try:
        async with slots:
          reply = await llm.complete(request)
      except (llm_lib.RetriesExhausted, llm_lib.FatalAPIError, llm_lib.BudgetExhausted) as e:
        raise GenerationFailed(f"grading {sample.task_id} sample {sample.sample_id} failed: "
                               f"{e}") from e
      return dict(task_id=sample.task_id, sample_id=sample.sample_id,
                  score=parse_score(reply.text), reply=reply.text, cached=reply.cached)

    try:
      rows = await first_failure_cancels([asyncio.create_task(one(s)) for s in samples])
      return rows, llm.stats.as_dict()
    finally:
      await llm.aclose()

  return asyncio.run(run())


def summarize(rows: Sequence[dict], *, model: str, base_url: str | None, stats: dict) -> dict:
  scores = [r["score"] if r["score"] is not None else 0.0 for r in rows]
  return {
      "graded_score_percent": 10.0 * sum(scores) / len(scores) if scores else None,
      "graded_num": len(rows),
      "graded_unparsable": sum(r["score"] is None for r in rows),
      "grader": dict(model=model, base_url=base_url, params=GRADER_PARAMS,
                     template_sha256=hashlib.sha256(GRADER_TEMPLATE.encode()).hexdigest()[:16],
                     score_pattern=SCORE.pattern, unparsable_scored_as=0,
                     cost_usd=stats.get("cost_usd"), cache_hits=stats.get("cache_hits"),
                     retries=stats.get("retries")),
  }


def run_grading(args, tasks, rubrics, samples, out_dir: str) -> dict:
  """The cli's step after execution: grade every sample, write graded.jsonl, return the summary."""
  rows, stats = grade(tasks, rubrics, samples, model=args.grader_model,
                      base_url=args.grader_base_url,
                      cache=os.path.join(out_dir, "grader_cache.sqlite"),
                      budget_usd=args.grader_budget_usd, max_attempts=args.max_attempts,
                      concurrency=args.concurrency)
  with open(os.path.join(out_dir, "graded.jsonl"), "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=True) + "\n")
  result = summarize(rows, model=args.grader_model, base_url=args.grader_base_url, stats=stats)
  if result["graded_unparsable"]:
    print(f"phi1 eval: {result['graded_unparsable']} grader replies had no 'Score: N' and count "
          "as 0 (see graded.jsonl)", file=sys.stderr)
  return result


BENCHMARK = Benchmark(
    name="graded", default_path=default_path,
    load=lambda path=None, split="test", prompt_style="": (
        load(path)[0], dict(name="graded", prompt_template="signature + docstring, as HumanEval")),
    stops=lambda prompt_style: postprocess.HUMANEVAL_STOPS,
    in_training=False)  # an LLM grades each completion
