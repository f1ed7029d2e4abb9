"""phi1/evals/benchmarks.py: one registry every consumer reads. A benchmark defined in this file
(one Benchmark, registered once) flows through `phi1 eval`, evals during training and the
training hooks without any other file knowing its name."""

import json

import pytest

from phi1 import metrics, train
from phi1.evals import benchmarks, cli, during_training, run
from phi1.evals.task import Benchmark, Sample, Task
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

PROMPTS = {"add": "def add(a, b):\n", "neg": "def neg(x):\n"}
REFERENCES = {"add": "  return a + b\n", "neg": "  return -x\n"}
TESTS = {"add": "def check(candidate):\n  assert candidate(1, 2) == 3\n",
         "neg": "def check(candidate):\n  assert candidate(4) == -4\n"}


def _load(path=None, split="test", prompt_style=""):
  tasks = [Task(task_id=f"Tiny/{name}", prompt=PROMPTS[name], prefix=PROMPTS[name],
                test=f"{TESTS[name]}check({name})\n", reference=REFERENCES[name], entry_point=name)
           for name in PROMPTS]
  return tasks, dict(name="tiny", prompt_template="a signature")


TINY = Benchmark(name="tiny", default_path=lambda: __file__, load=_load,
                 stops=lambda prompt_style: ("\ndef ",),
                 problems=lambda path: [(t.task_id, t.prompt, t.prompt + t.reference)
                                        for t in _load()[0]])


@pytest.fixture
def tiny():
  benchmarks.register(TINY)
  yield TINY
  benchmarks.unregister("tiny")


def test_the_shipped_benchmarks_and_their_uses():
  assert benchmarks.names()[:3] == ("humaneval", "mbpp", "graded")
  assert "graded" not in benchmarks.names(in_training=True)
  assert set(benchmarks.names(decontamination=True)) >= {"humaneval", "mbpp"}
  assert run.default_stops("mbpp", "docstring") != run.default_stops("mbpp", "fewshot")
  with pytest.raises(ValueError, match="unknown benchmark 'nope'; choose one of"):
    benchmarks.get("nope")
  with pytest.raises(ValueError, match="registered already"):
    benchmarks.register(Benchmark("humaneval", TINY.default_path, _load, TINY.stops))


def test_a_registered_benchmark_is_evaluated_by_the_harness_and_the_command(tiny, tmp_path):
  tasks, info = run.load_benchmark("tiny")
  assert [t.task_id for t in tasks] == ["Tiny/add", "Tiny/neg"] and info["num_tasks"] == 2
  samples = [Sample(tasks[0].task_id, 0, REFERENCES["add"]),
             Sample(tasks[1].task_id, 0, "  return x\n")]
  summary = run.evaluate(tasks, samples, protocol=info, progress=False)
  assert summary["pass@1"] == 0.5
  (tmp_path / "s.jsonl").write_text("".join(
      json.dumps({"task_id": t.task_id, "completion": t.reference}) + "\n" for t in tasks))
  summary = cli.evaluate("tiny", samples=str(tmp_path / "s.jsonl"), out=str(tmp_path / "out"),
                         no_progress=True)
  assert summary["pass@1"] == 1.0 and summary["protocol"]["dataset"]["name"] == "tiny"


def test_a_registered_benchmark_and_a_hook_run_inside_training(tiny, corpus, tmp_path):  # noqa: F811
  seen = []

  def my_hook(end: train.StepEnd):  # what a notebook adds: any metric of the live weights
    seen.append((end.step, end.eval_step))
    model = end.trainer.model(end.state)
    return {"my_layers": float(model.config.n_layers)} if end.eval_step else None

  config = tiny_config(corpus, steps=2, eval_every=2, log_every=1, checkpoint_every=2,
                       eval_batches=1, **{"data.eval_fraction": 0.1, "model.n_layers": 1,
                                          "model.d_model": 64, "model.n_heads": 2,
                                          "model.d_ff": 128})
  config.evals.solution_loss = ("tiny",)
  config.evals.every.tiny, config.evals.max_new_tokens, config.evals.batch_size = 2, 4, 2
  train.run(config, tmp_path, progress=False, hooks=[my_hook])
  assert seen == [(1, False), (2, True)]
  rows = {r["step"]: r for r in metrics.read_metrics(tmp_path) if "tiny_solution_loss" in r}
  assert list(rows) == [2] and rows[2]["tiny_solution_loss"] > 0
  assert rows[2]["tiny_pass@1"] in (0.0, 0.5, 1.0) and rows[2]["tiny_eval_s"] > 0
  logged = [r for r in metrics.read_metrics(tmp_path) if "my_layers" in r]
  assert [(r["step"], r["my_layers"]) for r in logged] == [(2, 1.0)]
  assert during_training.load_tasks("tiny", config)[0].task_id == "Tiny/add"


def test_training_refuses_a_benchmark_that_is_not_registered(corpus):  # noqa: F811
  config = tiny_config(corpus)
  config.eval_every = 2
  config.evals.solution_loss = ("tinyy",)
  with pytest.raises(ValueError, match="evals.solution_loss names \\['tinyy'\\]"):
    during_training.build(config, train.Trainer(config))
