"""MBPP (Austin et al. 2021, arXiv 2108.07732) from a JSON-lines file in the original release format.

Rows carry `task_id, text, code, test_list, test_setup_code, challenge_test_list`. Standard splits by
task_id: 1-10 few-shot prompts, 11-510 test, 511-600 validation, 601-974 train. Two prompt styles:
  "fewshot"    the original 3-shot prompt with tasks 2, 3, 4 (Austin et al. section 2.2): each shot
               is "You are an expert Python programmer, and here is your task: {text} Your code
               should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]"; the model writes
               the code for the last one and stops at [DONE]. The program run is the completion.
  "docstring"  zero-shot (bigcode-evaluation-harness): the description and the first test in a
               docstring; the model writes the code after it. The program run is prompt + completion.
Tests are the three asserts of `test_list` after `test_setup_code`; `challenge_test_list` is unused,
as in the paper.
"""

import json
import os
import re

from phi1.evals import postprocess
from phi1.evals.task import Benchmark, Task

SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974),
          "all": (1, 974)}
FEWSHOT_IDS = (2, 3, 4)
PROMPT_STYLES = ("fewshot", "docstring")


def default_path() -> str:
  """The original release shipped with the package (CC-BY-4.0; see data/MBPP_NOTICE.md)."""
  return os.path.join(os.path.dirname(__file__), "data", "mbpp.jsonl")


def read_rows(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      missing = {"task_id", "text", "code", "test_list"} - row.keys()
      if missing:
        raise ValueError(f"{path}:{number}: not an MBPP row, missing {sorted(missing)}")
      rows.append(row)
  return rows


def _code(row: dict) -> str:
  return row["code"].replace("\r\n", "\n").strip()


def _shot(row: dict) -> str:
  tests = "\n".join(row["test_list"])
  return (f"You are an expert Python programmer, and here is your task: {row['text']} "
          f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def fewshot_prompt(row: dict, shots: list[dict]) -> str:
  examples = "".join(f"{_shot(s)}{_code(s)}\n[DONE]\n" for s in shots)
  return examples + _shot(row)


def docstring_prompt(row: dict) -> str:
  return f'"""\n{row["text"]}\n{row["test_list"][0]}\n"""\n'


def entry_point(row: dict) -> str:
  """The function the asserts check: the first one the reference solution defines that they call
  (passed to the test even when it shares a builtin's name, as `sum` in task 126)."""
  tests = "\n".join(row["test_list"])
  for name in re.findall(r"^def\s+(\w+)", _code(row), re.M):
    if re.search(rf"\b{name}\s*\(", tests):
      return name
  return ""


def load(path: str | None = None, split: str = "test", prompt_style: str = "fewshot") -> list[Task]:
  if split not in SPLITS:
    raise ValueError(f"unknown MBPP split {split!r}; choose one of {sorted(SPLITS)}")
  if prompt_style not in PROMPT_STYLES:
    raise ValueError(f"unknown MBPP prompt style {prompt_style!r}; choose one of {PROMPT_STYLES}")
  rows = read_rows(path or default_path())
  by_id = {int(r["task_id"]): r for r in rows}
  shots = [by_id[i] for i in FEWSHOT_IDS]
  lo, hi = SPLITS[split]
  tasks = []
  for row in rows:
    if not lo <= int(row["task_id"]) <= hi:
      continue
    test = (row.get("test_setup_code") or "") + "\n" + "\n".join(row["test_list"]) + "\n"
    if prompt_style == "fewshot":
      prompt, prefix = fewshot_prompt(row, shots), ""
    else:
      prompt = prefix = docstring_prompt(row)
    tasks.append(Task(task_id=f"Mbpp/{row['task_id']}", prompt=prompt, prefix=prefix, test=test,
                      reference=_code(row) + "\n", entry_point=entry_point(row)))
  return tasks


TEMPLATES = {"fewshot": "3-shot (tasks 2, 3, 4), Austin et al. 2021 [BEGIN]/[DONE] format",
             "docstring": 'zero-shot: """\\n{text}\\n{first test}\\n"""\\n (bigcode)'}


def _benchmark_load(path=None, split: str = "test", prompt_style: str = "fewshot"
                    ) -> tuple[list[Task], dict]:
  path = path or default_path()
  if not os.path.exists(path):
    raise FileNotFoundError(f"MBPP file {path} not found; pass --data PATH to mbpp.jsonl")
  prompt_style = prompt_style or "fewshot"
  return load(path, split=split, prompt_style=prompt_style), dict(
      name="mbpp", split=split, prompt_style=prompt_style,
      prompt_template=TEMPLATES.get(prompt_style, prompt_style))


# Decontamination reads all 974 rows, every split: training data must not contain the few-shot or
# validation problems either.
BENCHMARK = Benchmark(
    name="mbpp", default_path=default_path, load=_benchmark_load,
    stops=lambda prompt_style: (postprocess.MBPP_FEWSHOT_STOPS if prompt_style in ("fewshot", "")
                                else postprocess.MBPP_STOPS),
    problems=lambda path: [(str(r["task_id"]), r["text"], r["code"].replace("\r\n", "\n"))
                           for r in read_rows(path)],
    # A small model's context rarely holds the 3-shot prompt: zero-shot docstring in training.
    training_prompt_style="docstring")
