"""Synthetic exercises (phi-1 §2.2, CodeExercises): a function signature + docstring to complete,
diversified by constraining the function name (data_gen/name_space.py: millions of names, benchmark
entry points excluded, each used once before any repeats) plus topic and difficulty, from
data_gen/tables/exercises.yaml, and a seed word from tables/seed_words.txt. By default the docstring
takes the paper's form (task, Parameters, Returns, no examples). Each record holds `prompt` (imports, signature,
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

from phi1.llm.client import Completion, Request
from data_gen.name_space import topic_name_spaces
from data_gen.permutation import StratifiedAllocation, slot_seed
from data_gen.tables import load_table, load_words, name_of, require, weighted
from data_gen.validate import check_exercise, code_blocks, run_hooks, split_function

SYSTEM = "You are an expert Python programmer who writes precise, well-tested programming exercises."

# Bump when PROMPT or the way constraints are drawn changes: the manifest records it, and a rerun into
# a directory made with another version is refused (see data_gen/provenance.py).
PROMPT_VERSION = "exercises-2"

PROMPT = """Write a Python programming exercise on the topic "{topic}", difficulty {difficulty} ({hint}).

The exercise is a single function named `{function_name}` with:
- a signature with type hints;
- {docstring}
- a correct, readable and efficient implementation after the docstring.
If it fits naturally, set the task in a situation that involves "{seed_word}".
Use only the Python standard library; put any imports above the function.
Reply with exactly one ```python code block containing the imports and the function, nothing else."""

# phi-1's example exercise (paper §2.2): a task statement, then Parameters and Returns, no examples.
DOCSTRING_PAPER = ("a docstring that states the task precisely, including edge cases, then a "
                   "\"Parameters:\" section with one line per argument (name (type): meaning) and a "
                   "\"Returns:\" section (type: meaning); no examples in the docstring;")
DOCSTRING_EXAMPLES = ("a docstring that states the task precisely, including edge cases, with one or "
                      "two examples;")


def function_names(table: dict, topic: dict) -> list[str]:
  """Every allowed name of one topic, listed (small tables and tests; the sampler never lists)."""
  space = topic_name_spaces({**table, "topics": [topic]})[0]
  return sorted({space[i] for i in range(len(space))})


def exercise_cells(table: dict) -> int:
  """(topic, function name, difficulty) cells, counting a name once per topic it belongs to."""
  return sum(len(s) for s in topic_name_spaces(table)) * len(table["difficulties"])


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
  docstring_examples: bool = False  # worked examples in the docstring instead of the paper's form
  keep_invalid: bool = False  # keep outputs that fail validation, flagged (the paper's unfiltered data)
  kind: str = "exercises"

  def __post_init__(self):
    require(self.table, ["topics", "difficulties"], "exercises")
    self.names = topic_name_spaces(self.table)
    self.allocation = StratifiedAllocation([t.get("weight", 1) for t in self.table["topics"]],
                                           [len(n) for n in self.names], f"exercises:{self.seed}")
    self.seed_words = load_words("seed_words")

  def constraints(self, slot: int) -> dict:
    _, t, index = self.allocation(slot)
    rng = random.Random(f"exercises:{self.seed}:{slot}")
    difficulty = weighted(rng, self.table["difficulties"])
    return {"topic": self.table["topics"][t]["name"], "difficulty": name_of(difficulty),
            "function_name": self.names[t][index], "seed_word": rng.choice(self.seed_words),
            "hint": difficulty.get("hint", "")}

  def prompt(self, c: dict) -> str:
    docstring = DOCSTRING_EXAMPLES if self.docstring_examples else DOCSTRING_PAPER
    return PROMPT.format(docstring=docstring, **c)

  def request(self, slot: int) -> tuple[Request, dict]:
    c = self.constraints(slot)
    messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": self.prompt(c)})
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

  def invalid_fields(self, completion: Completion, constraints: dict) -> dict:
    """What `--keep-invalid` stores for an output that failed validation: prompt and completion
    when the function could still be split out, else the code (or the whole answer) as text."""
    blocks = code_blocks(completion.text)
    code = blocks[0] if blocks else completion.text
    split = split_function(code, constraints["function_name"])
    if isinstance(split, tuple):
      return {"text": split[0] + split[1], "prompt": split[0], "completion": split[1]}
    return {"text": code if code.endswith("\n") else code + "\n"}
