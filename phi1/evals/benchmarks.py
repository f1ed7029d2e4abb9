"""The benchmark registry: every consumer asks here, none keeps its own list.

`phi1 eval --bench`, evals during training (`evals.solution_loss`, `evals.pass_at_k`), the sweep's
`--eval`, the registry's columns (experiments/registry.py) and decontamination
(`data_gen decontaminate --bench`) all read `names()` and `get(name)`. A benchmark is one module
that defines a `Benchmark` (phi1/evals/task.py: its tasks, prompt, test assembly, stop sequences,
protocol description and decontamination problems); the shipped ones are listed below, and a
notebook or test adds its own with `register(...)`.
"""

from phi1.evals import graded, humaneval, mbpp
from phi1.evals.task import Benchmark

_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
  """Add a benchmark (registering the same one twice is a no-op; another under a taken name is
  an error)."""
  known = _REGISTRY.get(benchmark.name)
  if known is not None and known is not benchmark:
    raise ValueError(f"a benchmark named {benchmark.name!r} is registered already")
  _REGISTRY[benchmark.name] = benchmark
  return benchmark


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def get(name: str) -> Benchmark:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown benchmark {name!r}; choose one of {names()}") from None


def names(*, in_training: bool | None = None, decontamination: bool | None = None
          ) -> tuple[str, ...]:
  """Registered names, in registration order; filtered to those evaluated during training, or
  those decontamination can check against."""
  return tuple(name for name, b in _REGISTRY.items()
               if (in_training is None or b.in_training == in_training)
               and (decontamination is None or (b.problems is not None) == decontamination))


for _shipped in (humaneval.BENCHMARK, mbpp.BENCHMARK, graded.BENCHMARK):
  register(_shipped)
