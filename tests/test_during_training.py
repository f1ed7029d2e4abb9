"""Solution loss and pass@1 logged by a real (tiny, CPU) training run, then read by the registry and
drawn against compute by experiments/plot.py."""

import json

import numpy as np
import pytest

from experiments import plot, registry
from phi1 import checkpoint, config as config_lib, train
from phi1.evals import humaneval, solution_loss
from phi1.model import Phi1Config
from phi1.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(stdlib_corpus):
  """The session's stdlib corpus and 512-piece tokenizer (tests/conftest.py)."""
  return stdlib_corpus


def config(corpus, **overrides):
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config.tiny(vocab_size=512, n_layers=1, d_model=64,
                                                    n_heads=2, d_ff=128, max_seq_len=256))
  c.steps, c.batch_size, c.seq_len = 4, 8, 64
  c.precision, c.mesh = "fp32", "dp"
  c.optimizer.peak_lr, c.optimizer.warmup_steps, c.optimizer.schedule_steps = 3e-3, 1, 4
  c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 2, 2, 1, 4
  c.data.sources = [{"path": corpus["train"], "weight": 1.0}]
  c.data.tokenizer = corpus["tokenizer"]
  c.data.prefetch_batches = 0
  c.data.eval_fraction = 0.1
  c.evals.solution_loss = ("humaneval",)
  c.evals.every.humaneval, c.evals.limit, c.evals.max_new_tokens, c.evals.batch_size = 4, 3, 8, 8
  return config_lib.apply_overrides(c, {k: str(v) for k, v in overrides.items()})


def test_training_logs_solution_loss_and_pass_at_1_that_the_registry_and_plot_use(corpus, tmp_path):
  workdir = tmp_path / "sweep" / "run_a"
  train.run(config(corpus), workdir, progress=False)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  solution = {r["step"]: r["humaneval_solution_loss"] for r in rows if "humaneval_solution_loss" in r}
  assert sorted(solution) == [2, 4]
  assert all(0 < v < 20 for v in solution.values())
  passk = [r for r in rows if "humaneval_pass@1" in r]
  assert [r["step"] for r in passk] == [4] and passk[0]["humaneval_pass@1"] == 0.0
  assert passk[0]["humaneval_eval_s"] > 0

  # The logged value is the metric of the exported params (the same computation offline).
  model, _ = checkpoint.load_for_inference(workdir)
  scorer = solution_loss.SolutionLoss(humaneval.load()[:3], load_tokenizer(corpus["tokenizer"]),
                                      max_len=256)  # evals.limit=3 limits both evals
  np.testing.assert_allclose(scorer(model)["solution_loss"], solution[4], rtol=1e-4)

  # `phi1 eval --solution-loss` computes it for any checkpoint; the registry prefers that file.
  from phi1.evals import cli as eval_cli
  assert eval_cli.main(["--bench", "humaneval", "--solution-loss", "--checkpoint", str(workdir),
                        "--limit", "3", "--out", str(workdir / "eval_humaneval")]) == 0
  offline = json.loads((workdir / "eval_humaneval" / "solution_loss.json").read_text())
  assert offline["solution_loss"] == pytest.approx(solution[4], rel=1e-4)
  assert len(offline["per_task"]) == 3 and offline["protocol"]["dataset"]["name"] == "humaneval"
  row = registry.run_row(workdir)
  assert row["humaneval_solution_loss"] == pytest.approx(solution[4])
  assert row["humaneval_pass@1"] == 0.0
  out = plot.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "plots")])
  assert out == 0
  assert (tmp_path / "plots" / "solution_loss_vs_compute.png").is_file()
  assert (tmp_path / "plots" / "pass_at_1_vs_compute.png").is_file()


def test_solution_loss_needs_eval_steps(corpus):
  from phi1.evals import during_training
  c = config(corpus, eval_every=0)
  with pytest.raises(ValueError, match="eval_every"):
    during_training.build(c, train.Trainer(c))
