"""Generation through an OpenAI-compatible server, on the project's one LLM client (phi1.llm).

That layer's retries (exponential backoff with jitter on 429 / 408 / 409 / 5xx / timeouts / dropped
connections, honouring Retry-After; a 429 pauses every request) and bounded concurrency are used as
they are. What an eval adds: each answer is handed to `emit` (saved to generations.jsonl) the
moment it arrives, and the first request that has used up its retries (or that the server refuses
outright) stops the run: nothing new is sent, requests in flight are cancelled, and
`GenerationFailed` names the request and the server's last answer. A rerun resumes.
Sample j of a problem is sent with seed `seed + j`: samples differ, and each is reproducible.
"""

import asyncio
import sys
from collections.abc import Callable, Sequence

from phi1.evals.task import Task

CHAT_INSTRUCTION = ("Complete the following Python code. Reply with the complete function in one "
                    "```python code block.\n\n")


class GenerationFailed(RuntimeError):
  pass


def retry_policy(max_attempts: int):
  """The LLM client's retry policy with a backoff ceiling of 30 s: a dead server is given up on (and
  the run stopped) within about a minute of its first failure at the default 6 attempts."""
  from phi1.llm import client as llm_lib
  if max_attempts < 1:
    raise ValueError(f"--max-attempts must be at least 1, got {max_attempts}")
  return llm_lib.RetryPolicy(max_attempts=max_attempts, base_s=1.0, max_s=30.0,
                             max_retry_after_s=60.0)


def extract_code(reply: str) -> str:
  """The first fenced code block of a chat reply (the whole reply when it has none)."""
  start = reply.find("```")
  if start == -1:
    return reply
  start = reply.find("\n", start) + 1
  end = reply.find("```", start)
  return reply[start:end if end != -1 else len(reply)]


async def first_failure_cancels(tasks: Sequence[asyncio.Task]) -> list:
  """The tasks' results in order; the first exception cancels the rest and is raised.

  FIRST_EXCEPTION returns it while the others still run, so a dead server ends the run at once
  instead of after every queued request has used up its retries.
  """
  if not tasks:
    return []
  done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
  for task in pending:
    task.cancel()
  await asyncio.gather(*pending, return_exceptions=True)
  for task in done:
    if task.exception() is not None:
      raise task.exception()
  return [task.result() for task in tasks]


def generate_into(jobs: Sequence[tuple[Task, int]], emit: Callable[[str, int, str], None], *,
                  base_url: str, model: str, max_new_tokens: int, temperature: float, top_p: float,
                  stops: Sequence[str], chat: bool = False, concurrency: int = 8, seed: int = 0,
                  retry=None, timeout_s: float = 300.0, progress: bool = True):
  """Request every (task, sample) of `jobs`; emit(task_id, sample_id, raw) per answer."""
  from phi1.llm import client as llm_lib  # the one retry / rate-limit implementation

  async def run():
    llm = llm_lib.LLM(model, base_url=base_url, concurrency=concurrency, retry=retry,
                      timeout_s=timeout_s, api_key=_api_key())
    bar = _bar(progress, len(jobs))
    queue = list(reversed(jobs))

    async def worker():
      while queue:
        task, j = queue.pop()
        params = dict(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if chat:
          request = llm_lib.Request(
              messages=[{"role": "user", "content": CHAT_INSTRUCTION + task.prompt}],
              params=params, seed=seed + j)
        else:
          # OpenAI accepts at most 4 stop strings; post-processing applies the full list anyway.
          request = llm_lib.Request(prompt=task.prompt, params=dict(params, stop=list(stops)[:4]
                                                                    or None), seed=seed + j)
        try:
          reply = await llm.complete(request)
        except (llm_lib.RetriesExhausted, llm_lib.FatalAPIError) as e:
          raise GenerationFailed(f"request for {task.task_id} sample {j} failed: {e}") from e
        emit(task.task_id, j, extract_code(reply.text) if chat else reply.text)
        bar.update(1)

    try:
      await first_failure_cancels(
          [asyncio.create_task(worker()) for _ in range(min(concurrency, len(jobs)))])
    finally:
      bar.close()
      await llm.aclose()

  asyncio.run(run())


def _api_key() -> str:
  import os
  # From the environment only, never logged or written; local servers accept any value.
  return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def _bar(enabled: bool, total: int):
  from tqdm import tqdm
  return tqdm(total=total, desc="generating", unit="sample", file=sys.stderr, disable=not enabled)
