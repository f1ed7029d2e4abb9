"""A benchmark problem as the harness sees it (the prompt a model completes, the test it must pass),
a sample (one answer to it), and a benchmark: what every consumer needs to know about a set of
problems (registered in phi1/evals/benchmarks.py)."""

import dataclasses
import hashlib
from collections.abc import Callable

from phi1.evals.sandbox import Program


@dataclasses.dataclass(frozen=True)
class Task:
  task_id: str
  prompt: str            # what the model is asked to continue
  test: str              # runs in the sandbox's judge, calling the solution; passes by returning
  reference: str         # a known-good completion of `prompt` (canonical / reference solution)
  prefix: str = ""       # code placed before the completion (HumanEval: the prompt itself)
  entry_point: str = ""
  setup: str = ""        # benchmark code the judge runs before the test (HumanEval: the prompt)

  def program(self, completion: str, whole: bool = False) -> Program:
    """`whole`: `completion` is the full program (evalplus's `solution`), not a continuation."""
    return Program(code=completion if whole else self.prefix + completion, test=self.test,
                   entry_point=self.entry_point, setup=self.setup)


@dataclasses.dataclass(frozen=True)
class Sample:
  """One model answer to a task, as the harness executes it."""
  task_id: str
  sample_id: int
  completion: str
  raw: str | None = None  # the model's text before post-processing, when we generated it
  whole_program: bool = False  # evalplus `solution`: the full program, not a prompt continuation



@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark, defined once in its own module and read by every consumer: `phi1 eval`, evals
  during training, the sweep's --eval, the registry's columns and decontamination.

  load(path, split=, prompt_style=) -> (tasks, protocol description: name, prompt_template, ...);
  path None is `default_path()`. Each task carries its prompt, its test program (assembled by the
  benchmark's module) and its reference solution (the solution loss scores it)."""
  name: str
  default_path: Callable[[], str]
  load: Callable[..., tuple[list[Task], dict]]
  stops: Callable[[str], tuple[str, ...]]  # prompt_style -> where a completion ends
  # path -> [(task_id, prose, full solution)] that training data must not contain; None: not
  # used for decontamination
  problems: Callable[[str], list[tuple[str, str, str]]] | None = None
  in_training: bool = True   # pass@k and solution loss during training (not: needs an LLM grader)
  training_prompt_style: str = ""  # the prompt style evals during training use ("": load's default)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
