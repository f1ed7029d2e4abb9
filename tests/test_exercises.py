"""Synthetic exercises: name space, prompt/completion split, execution check, and a 2,000-request
run through 20% injected faults that must end with exactly the requested records."""

import asyncio

import pytest

from data_gen.exercises import ExerciseTask, SandboxChecker, SubprocessChecker, exercise_cells, \
    function_names
from phi1.llm.client import LLM, RetryPolicy
from data_gen.runner import generate
from data_gen.shards import ShardWriter, read_records
from data_gen.tables import load_table
from data_gen.testing import FakeOpenAI
from data_gen.textbooks import TextbookTask
from data_gen.validate import check_exercise, split_function

CODE = '''import math


def area_of_circle(radius: float) -> float:
    """Area of a circle.

    >>> round(area_of_circle(1.0), 2)
    3.14
    """
    if radius < 0:
        raise ValueError("negative radius")
    return math.pi * radius ** 2


print(area_of_circle(2.0))
'''


def test_name_space_and_cells():
  table = load_table("exercises")
  assert exercise_cells(table) >= 10_000
  names = {n for t in table["topics"] for n in function_names(table, t)}
  assert len(names) >= 10_000 and all(n.isidentifier() for n in names)
  task = ExerciseTask(table, seed=0)
  sampled = [task.constraints(i)["function_name"] for i in range(2000)]
  assert len(set(sampled)) > 1800 and set(sampled) <= names


def test_split_into_prompt_and_completion():
  prompt, completion = split_function(CODE, "area_of_circle")
  assert prompt.startswith("import math") and prompt.rstrip().endswith('"""')
  assert completion.startswith("    if radius < 0:") and completion.endswith("radius ** 2\n")
  assert "print(" not in completion  # code after the function is not part of the exercise
  assert (prompt + completion) in CODE


@pytest.mark.parametrize("text,finish,reason", [
    ("```python\n" + CODE + "```", "length", "truncated"),
    ("```python\n" + CODE + "```", "stop", "wrong_name"),
    ("```python\ndef f(:\n```", "stop", "syntax_error"),
    ("```python\ndef g(x):\n    return x * 2 + 1000000\n```", "stop", "no_docstring"),
    ('```python\ndef g(x):\n    """Doc."""\n    ...\n```', "stop", "empty_body"),
    ("no code at all, sorry", "stop", "no_code"),
])
def test_rejects_by_reason(text, finish, reason):
  name = "g" if "def g" in text else "other_name"
  assert check_exercise(text, finish, name, 20) == reason


@pytest.mark.parametrize("checker_cls", [SandboxChecker, SubprocessChecker])
def test_execution_check_rejects_programs_that_fail(checker_cls):
  checker = checker_cls(5.0, 2)

  async def run():
    return await asyncio.gather(checker("x = 1\n"), checker("raise ValueError('no')\n"),
                                checker("import os\nassert 'OPENAI_API_KEY' not in os.environ\n"))

  try:
    ok, failing, no_secrets = asyncio.run(run())
  finally:
    checker.close()
  assert ok is None and failing is not None and no_secrets is None


def _run(server, tmp_path, n, task, concurrency=32):
  async def run():
    async with LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                   cache=str(tmp_path / "cache.sqlite"), concurrency=concurrency, timeout_s=1.0,
                   retry=RetryPolicy(max_attempts=12, base_s=0.005, max_s=0.02)) as llm:
      with ShardWriter(str(tmp_path / "out"), kind="exercises", shard_size=500) as writer:
        return await generate(task, llm, writer, n, progress=False)
  return asyncio.run(run())


def test_execute_switch_runs_completions_in_the_sandbox(tmp_path):
  checker = SandboxChecker(5.0, 2)
  calls = []

  async def counting(program):
    calls.append(program)
    return await checker(program)

  task = ExerciseTask(seed=1, checker=counting)
  try:
    with FakeOpenAI() as server:
      summary = _run(server, tmp_path, 8, task, concurrency=4)
  finally:
    checker.close()
  assert summary.ok and summary.stored == 8 and len(calls) == 8
  assert {r["text"] for r in read_records(str(tmp_path / "out"))} == set(calls)


def test_2000_requests_with_20_percent_faults_give_exactly_n_records(tmp_path):
  n = 1700
  with FakeOpenAI(fault_rate=0.2, latency_s=0.002, slow_s=1.5, retry_after_s=0.005) as server:
    summary = _run(server, tmp_path, n, ExerciseTask(seed=7))
    stats = server.stats()
  records = read_records(str(tmp_path / "out"))
  assert summary.ok and summary.stored == n and len(records) == n
  assert len({r["id"] for r in records}) == n and len({r["text"] for r in records}) == n
  attempts = sum(stats["request_counts"].values())
  faults = stats["fault_counts"]
  assert attempts >= 2000
  # Every fault but "truncated" (a paid answer, rejected) forces a retry; a loaded machine may add
  # a few genuine client timeouts on top.
  assert summary.llm["retries"] == sum(summary.llm["errors"].values())
  assert summary.llm["retries"] >= sum(faults.values()) - faults.get("truncated", 0) > 300
  assert summary.rejects.get("truncated", 0) == faults.get("truncated", 0)
  # No answer is paid for twice, except one the client timed out on just as it arrived (a real
  # provider bills that too): only client timeouts can cause it (on a loaded machine a "slow"
  # answer can also leave the server just before the client's deadline fires).
  served = stats["served_counts"]
  paid_twice = sum(count - 1 for count in served.values())
  assert paid_twice <= summary.llm["errors"].get("timeout", 0)
  for r in records:
    assert served[r["request_hash"]] >= 1
    assert r["text"] == r["prompt"] + r["completion"]
    assert f"def {r['constraints']['function_name']}(" in r["prompt"]


def test_trainer_reads_exercise_shards_as_prompt_and_completion(tmp_path):
  records = [{"id": "e1", "text": "def f():\n    \"\"\"D.\"\"\"\n    return 1\n",
              "prompt": "def f():\n    \"\"\"D.\"\"\"\n", "completion": "    return 1\n",
              "source": "synthetic_exercises"}]
  with ShardWriter(str(tmp_path), kind="exercises") as writer:
    writer.append(records[0])
  from phi1.data import records as records_module  # a broken import fails, never skips
  from data_gen.shards import shard_files
  path = shard_files(str(tmp_path))[0]
  docs = list(records_module.read_documents(path, records_module.SourceStats(path)))
  assert docs == [(records[0]["prompt"], records[0]["completion"])]


def test_docstrings_take_the_papers_form_by_default():
  default = ExerciseTask(seed=0).request(0)[0].messages[1]["content"]
  examples = ExerciseTask(seed=0, docstring_examples=True).request(0)[0].messages[1]["content"]
  assert '"Parameters:"' in default and '"Returns:"' in default and "no examples" in default
  assert "one or two examples" in examples and "Parameters" not in examples


def test_sampled_names_avoid_benchmark_entry_points():
  from data_gen.name_space import benchmark_names, words
  banned = {words(n) for n in benchmark_names()}
  task = ExerciseTask(seed=0)
  names = [task.constraints(s)["function_name"] for s in range(5000)]
  assert len(set(names)) >= 4990 and not any(words(n) in banned for n in names)


def test_requests_are_the_same_in_another_process():
  """Resume and --shard rebuild slots in new processes (other PYTHONHASHSEED): nothing may
  depend on process state."""
  import json
  import os
  import subprocess
  import sys
  code = ("import json; from data_gen.exercises import ExerciseTask; "
          "from data_gen.textbooks import TextbookTask; "
          "print(json.dumps([ExerciseTask(seed=4).request(s)[0].messages[1]['content'] for s in "
          "(0, 77, 10**6)] + [TextbookTask(seed=4).request(s)[0].messages[1]['content'] for s in "
          "(0, 77, 10**6)]))")
  env = {**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONHASHSEED": "12345"}
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  here = ([ExerciseTask(seed=4).request(s)[0].messages[1]["content"] for s in (0, 77, 10 ** 6)]
          + [TextbookTask(seed=4).request(s)[0].messages[1]["content"] for s in (0, 77, 10 ** 6)])
  assert json.loads(r.stdout) == here and len(set(here)) == 6
