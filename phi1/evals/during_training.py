"""Benchmark evals inside a training run: solution loss and pass@k, logged to metrics.jsonl.

Config keys: the `evals` block of phi1/config.py's base_config (0 / () turns each off; <bench> is
any benchmark of phi1/evals/benchmarks.py's registry that runs during training):
  evals.solution_loss    benchmarks whose reference-solution loss is logged at every `eval_every`
                         step as `<bench>_solution_loss` (phi1/evals/solution_loss.py)
  evals.solution_loss_split  a `data_gen decontaminate` report.json: also log
                         `<bench>_solution_loss_similar` / `_non_similar` (paper §5's split)
  evals.every.<bench>    every N steps (and at the last step): generate with the current params
                         (jitted KV-cache decoding, batched), execute in the sandbox, log
                         `<bench>_pass@1` (and `_pass@k` for k <= evals.samples)
  evals.limit            the first N problems only, for both (0: all)
  evals.samples, evals.temperature, evals.max_new_tokens, evals.batch_size   generation settings
                         (greedy by default, as the paper's pass@1)
  evals.path.<bench>     the benchmark's data file (default: the shipped one)
Prompts are in the benchmark's `training_prompt_style` (MBPP: the zero-shot docstring prompt, as a
small model's context rarely holds the 3-shot one). `train.run(hooks=[...])` runs these evals as
its first hook; a notebook adds its own after them.
Generation is split over the training mesh's data-parallel axes: each device decodes its share of
the prompts (on every process of a multi-host run) and the tokens are gathered back; process 0
alone executes and logs. The time each eval took is logged as `<bench>_eval_s`, so its overhead per step is visible.
"""

import time

import jax
import numpy as np

from phi1.evals import benchmarks, postprocess
from phi1.evals import task as task_lib


def load_tasks(bench: str, config) -> list:
  """The benchmark's tasks in the prompt style evals during training use (its own path from
  `evals.path.<bench>` when the config has one)."""
  benchmark = benchmarks.get(bench)
  if not benchmark.in_training:
    raise ValueError(f"benchmark {bench!r} is not evaluated during training; choose from "
                     f"{benchmarks.names(in_training=True)}")
  path = config.evals.path.get(bench) or None
  tasks, _ = benchmark.load(path or benchmark.default_path(), split="test",
                            prompt_style=benchmark.training_prompt_style)
  return tasks


class TrainingEvals:
  """Built once per run (tasks tokenized, scorers made); `run(...)` at each step."""

  def __init__(self, config, trainer, tokenizer):
    self.config, self.trainer, self.tokenizer = config, trainer, tokenizer
    self.solution = {}
    unknown = set(config.evals.solution_loss) - set(benchmarks.names(in_training=True))
    if unknown:
      raise ValueError(f"evals.solution_loss names {sorted(unknown)}; choose from "
                       f"{benchmarks.names(in_training=True)}")
    if config.evals.solution_loss and not config.eval_every:
      raise ValueError("evals.solution_loss is logged at eval steps: set eval_every > 0")
    if config.evals.solution_loss:
      from phi1.evals.solution_loss import SolutionLoss, decontamination_splits
      for bench in config.evals.solution_loss:
        splits = (decontamination_splits(config.evals.solution_loss_split, bench)
                  if config.evals.solution_loss_split else None)
        scorer = SolutionLoss(_limited(load_tasks(bench, config), config.evals.limit),
                              tokenizer,
                              max_len=trainer.model_config.max_seq_len,
                              batch_size=_multiple_of(8, _batch_shards(trainer)))
        self.solution[bench] = (scorer, splits)
    self.every = {b: int(config.evals.every.get(b, 0) or 0)
                  for b in benchmarks.names(in_training=True)}
    self.pass_tasks = {b: _limited(load_tasks(b, config), config.evals.limit)
                       for b, every in self.every.items() if every}

  @property
  def enabled(self) -> bool:
    return bool(self.solution or self.pass_tasks)

  def __call__(self, end) -> dict:
    """The training hook (phi1/train.py's StepEnd)."""
    return self.run(end.state, end.step, end.last_step, end.eval_step)

  def run(self, state, done: int, last_step: int, eval_step: bool) -> dict:
    """Metrics due at step `done`: solution losses at eval steps, pass@k at their own period."""
    from phi1 import sharding
    with sharding.activation_sharding(self.trainer.mesh, self.trainer.rules):
      return self._run(state, done, last_step, eval_step)

  def _run(self, state, done: int, last_step: int, eval_step: bool) -> dict:
    out = {}
    if eval_step:
      for bench, (scorer, splits) in self.solution.items():
        start = time.perf_counter()
        nll = scorer.per_task_nll(self.trainer.eval_graphdef, state.params, put=self._replicate)
        result = scorer.summarize(nll, splits)
        out[f"{bench}_solution_loss"] = result["solution_loss"]
        for name in splits or {}:
          out[f"{bench}_solution_loss_{name}"] = result[f"solution_loss_{name}"]
        out[f"{bench}_solution_loss_s"] = time.perf_counter() - start
    for bench, tasks in self.pass_tasks.items():
      if done % self.every[bench] == 0 or done == last_step:
        start = time.perf_counter()
        out.update({f"{bench}_{k}": v for k, v in self.pass_at_k(bench, tasks, state).items()})
        out[f"{bench}_eval_s"] = time.perf_counter() - start
    return out

  def pass_at_k(self, bench: str, tasks, state) -> dict:
    from phi1 import generate
    from phi1.evals import run as run_lib
    c = self.config
    benchmark = benchmarks.get(bench)
    stops = list(benchmark.stops(benchmark.training_prompt_style))
    n = int(c.evals.samples)
    model = self.trainer.model(state)
    prompts = [t.prompt for t in tasks for _ in range(n)]
    texts = generate.generate(model, self.tokenizer, prompts,
                              max_new_tokens=int(c.evals.max_new_tokens),
                              temperature=float(c.evals.temperature), stop=stops,
                              seed=int(c.seed), batch_size=int(c.evals.batch_size),
                              truncate="left", mesh=self.trainer.mesh)
    if jax.process_index() != 0:
      return {}
    samples = [task_lib.Sample(t.task_id, j, postprocess.cut_at_stops(texts[i * n + j], stops))
               for i, t in enumerate(tasks) for j in range(n)]
    rows, _ = run_lib.execute(tasks, samples, progress=False)
    summary = run_lib.score(rows)
    return {k: v for k, v in summary.items() if k.startswith("pass@")}

  def _replicate(self, batch: dict) -> dict:
    """A host numpy batch as arrays replicated over the training mesh (every process holds it)."""
    sharding = self.trainer.replicated
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def _limited(tasks: list, limit: int) -> list:
  return tasks[:limit] if limit else tasks


def _batch_shards(trainer) -> int:
  from phi1 import sharding
  return sharding.batch_shards(trainer.mesh)


def _multiple_of(n: int, k: int) -> int:
  return int(np.ceil(n / k) * k)


def build(config, trainer) -> "TrainingEvals | None":
  """The run's evals, or None when the config asks for none (no tokenizer is loaded then)."""
  wanted = config.evals.solution_loss or any(
      config.evals.every.get(b) for b in benchmarks.names(in_training=True))
  if not wanted:
    return None
  if not config.data.tokenizer:
    raise ValueError("benchmark evals during training need data.tokenizer (prompts are text)")
  from phi1.tokenizer import load_tokenizer
  return TrainingEvals(config, trainer, load_tokenizer(config.data.tokenizer))
