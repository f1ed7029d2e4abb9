"""Synthetic exercises (phi-1 §2.2, CodeExercises): a function signature + docstring to complete,
diversified by constraining the function name (drawn from a generated name space) plus topic and
difficulty, from data_gen/tables/exercises.yaml. Each record holds `prompt` (imports, signature,
docstring), `completion` (the body) and `text` = prompt + completion, ready for finetuning.

With `execute=True` a completion only counts if prompt + completion runs without error in the
evaluation sandbox (phi1.evals.sandbox: OS-isolated, no environment, so no API key reaches it).
"""

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import tempfile

from data_gen.llm import Completion, Request
from data_gen.tables import load_table, name_of, require, weighted
from data_gen.textbooks import slot_seed
from data_gen.validate import check_exercise, run_hooks

SYSTEM = "You are an expert Python programmer who writes precise, well-tested programming exercises."

PROMPT = """Write a Python programming exercise on the topic "{topic}", difficulty {difficulty} ({hint}).

The exercise is a single function named `{function_name}` with:
- a signature with type hints;
- a docstring that states the task precisely, including edge cases, with one or two examples;
- a correct, readable and efficient implementation after the docstring.
Use only the Python standard library; put any imports above the function.
Reply with exactly one ```python code block containing the imports and the function, nothing else."""


def function_names(table: dict, topic: dict) -> list[str]:
  """Every name the table can produce for one topic (verb_object[_qualifier])."""
  return sorted({_name(v, o, name_of(q)) for v in topic["verbs"] for o in topic["objects"]
                 for q in table["qualifiers"]})


def _name(verb: str, obj: str, qualifier: str) -> str:
  return f"{verb}_{obj}" + (f"_{qualifier}" if qualifier else "")


def exercise_cells(table: dict) -> int:
  return sum(len(function_names(table, t)) for t in table["topics"]) * len(table["difficulties"])


class SubprocessChecker:
  """Fallback when phi1.evals.sandbox is unavailable: `python -I` in a temp dir, empty environment,
  own session killed on timeout. Weaker isolation than the sandbox (no namespaces, no rlimits)."""

  def __init__(self, timeout_s: float, concurrency: int):
    self.timeout_s = timeout_s
    self._semaphore = asyncio.Semaphore(concurrency)

  async def __call__(self, program: str) -> str | None:
    async with self._semaphore:
      with tempfile.TemporaryDirectory() as cwd:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", program, cwd=cwd, env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
          code = await asyncio.wait_for(process.wait(), self.timeout_s)
        except asyncio.TimeoutError:
          os.killpg(process.pid, 9)
          await process.wait()
          return "timeout"
        return None if code == 0 else "runtime_error"

  def close(self):
    pass


class SandboxChecker:
  """Batches concurrent checks into `Sandbox.run` calls on a worker thread (the sandbox is
  synchronous and its warm workers are the expensive part)."""

  def __init__(self, timeout_s: float, workers: int | None):
    from phi1.evals.sandbox import Sandbox  # lazy: only when execution checks are on
    self._sandbox = Sandbox(workers=workers, timeout_s=timeout_s, quiet=True)
    self._queue: list[tuple[str, asyncio.Future]] = []
    self._runner: asyncio.Task | None = None

  async def __call__(self, program: str) -> str | None:
    future = asyncio.get_running_loop().create_future()
    self._queue.append((program, future))
    if self._runner is None or self._runner.done():
      self._runner = asyncio.ensure_future(self._drain())
    return await future

  async def _drain(self):
    while self._queue:
      batch, self._queue = self._queue, []
      try:
        results = await asyncio.to_thread(self._sandbox.run, [p for p, _ in batch])
      except Exception as e:  # the sandbox itself failed: every waiter must hear about it
        for _, future in batch:
          future.set_exception(e)
        continue
      for (_, future), result in zip(batch, results):
        future.set_result(None if result.passed else
                          ("timeout" if result.status == "timeout" else f"runtime_{result.status}"))

  def close(self):
    self._sandbox.close()


def make_checker(timeout_s: float = 5.0, workers: int | None = None):
  """The evaluation sandbox when importable, else the subprocess fallback (with a warning)."""
  try:
    return SandboxChecker(timeout_s, workers)
  except ImportError as e:
    print(f"data_gen: phi1.evals.sandbox unavailable ({e}); checking exercises in plain "
          "subprocesses instead", file=sys.stderr)
    return SubprocessChecker(timeout_s, workers or os.cpu_count() or 1)


@dataclasses.dataclass
class ExerciseTask:
  table: dict = dataclasses.field(default_factory=lambda: load_table("exercises"))
  seed: int = 0
  temperature: float = 1.0
  max_tokens: int = 1024
  min_completion_chars: int = 20
  checker: object = None  # async callable program -> reject reason | None (see make_checker)
  hooks: tuple = ()  # extra validation hooks: fields dict -> reject reason | None
  kind: str = "exercises"

  def __post_init__(self):
    require(self.table, ["topics", "difficulties", "qualifiers"], "exercises")

  def constraints(self, slot: int) -> dict:
    rng = random.Random(f"exercises:{self.seed}:{slot}")
    topic = weighted(rng, self.table["topics"])
    difficulty = weighted(rng, self.table["difficulties"])
    name = _name(rng.choice(topic["verbs"]), rng.choice(topic["objects"]),
                 name_of(weighted(rng, self.table["qualifiers"])))
    return {"topic": topic["name"], "difficulty": name_of(difficulty),
            "function_name": name, "hint": difficulty.get("hint", "")}

  def request(self, slot: int) -> tuple[Request, dict]:
    c = self.constraints(slot)
    messages = ({"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT.format(**c)})
    params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
    constraints = {k: v for k, v in c.items() if k != "hint"}
    return Request(messages=messages, params=params,
                   seed=slot_seed(self.seed, slot, self.kind)), constraints

  async def check(self, completion: Completion, constraints: dict) -> dict | str:
    split = check_exercise(completion.text, completion.finish_reason, constraints["function_name"],
                           self.min_completion_chars)
    if isinstance(split, str):
      return split
    prompt, completion_text = split
    if self.checker is not None:
      reason = await self.checker(prompt + completion_text)
      if reason:
        return reason
    fields = {"text": prompt + completion_text, "prompt": prompt, "completion": completion_text}
    return run_hooks(self.hooks, fields) or fields
