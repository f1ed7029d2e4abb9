"""Paper Figure 2.1 on a CPU: the same models trained on three data columns, measured by how well
they predict HumanEval's reference solutions (pass@1 is 0 for every run at this scale; the
solution loss, phi1/evals/solution_loss.py, is continuous and moves with the data).

Columns (experiments/figure21_data.py builds them from the demo corpus):
  raw                      standard-library files as they are (The Stack+'s stand-in)
  codetextbook             documented files + textbook-like functions, mixed by size
  codetextbook_exercises   codetextbook, then a short finetune on exercises decontaminated
                           against HumanEval (its compute is the pretrain's plus its own)
at two compute budgets (separate runs of BUDGETS steps, each with its own schedule) and two sizes,
SEEDS seeds each (seed = init + data order). Every run logs `humaneval_solution_loss` and the
held-out standard-library loss at its eval steps.

  python -m experiments.sweep experiments/figure21_cpu.py --root runs/figure21      # ~10 min
  python -m experiments.figure21_report runs/figure21                               # figure + gap
  python -m experiments.sweep experiments/figure21_cpu.py:ci --root /tmp/f21        # CI size
"""

from experiments import figure21_data, recipes
from phi1.model import Phi1Config

# arg -> sizes, budgets (pretrain steps), seeds, finetune steps, batch x seq_len.
SETTINGS = {
    "": dict(sizes={"d64": dict(d_model=64, n_heads=2, d_ff=256),
                    "d128": dict(d_model=128, n_heads=4, d_ff=512)},
             budgets=(100, 200), seeds=(0, 1, 2), finetune_steps=30, batch=8, seq=256),
    "ci": dict(sizes={"d32": dict(d_model=32, n_heads=1, d_ff=64)},
               budgets=(4,), seeds=(0, 1), finetune_steps=2, batch=8, seq=64),
}


def _settings(arg: str) -> dict:
  if arg not in SETTINGS and arg != "cpu":
    raise ValueError(f"figure21_cpu takes '' (full, CPU-sized already; 'cpu' is the same) or "
                     f"'ci', got {arg!r}")
  return SETTINGS["" if arg == "cpu" else arg]


def get_config(arg: str = ""):
  s = _settings(arg)
  data = figure21_data.build(log=lambda *_: None)
  c = recipes.cpu_size(recipes.pretrain(Phi1Config.phi1_small()), "pretrain")
  full = arg != "ci"
  c.model.update(dict(n_layers=2, rotary_dim=16, max_seq_len=1024 if full else 128,
                      **next(iter(s["sizes"].values()))))
  c.batch_size, c.seq_len = s["batch"], s["seq"]
  c.steps = c.optimizer.schedule_steps = s["budgets"][-1]
  c.optimizer.peak_lr, c.optimizer.warmup_steps = 3e-3, max(1, s["budgets"][0] // 10)
  c.data.sources = [{"path": data.raw, "weight": 1.0, "name": "raw"}]
  c.data.eval_sources = [data.eval_files]
  c.data.eval_fraction = 0.0
  c.eval_batches = 4 if full else 1
  c.log_every = 10 if full else 2
  c.keep_last, c.keep_every = 1, 0
  c.evals.solution_loss = ("humaneval",)
  c.evals.solution_loss_split = data.decontamination_report
  c.evals.limit = 0 if full else 16  # CI: the first 16 HumanEval problems
  return c


def _schedule(steps: int, evals: int = 2) -> dict:
  every = max(1, steps // evals)
  return {"steps": steps, "optimizer.schedule_steps": steps, "eval_every": every,
          "checkpoint_every": steps, "optimizer.warmup_steps": max(1, steps // 10)}


def get_sweep(arg: str = ""):
  s = _settings(arg)
  data = figure21_data.build(log=lambda *_: None)
  columns = {
      "raw": [{"path": data.raw, "weight": 1.0, "name": "raw"}],
      # Mixed by size as the paper's CodeTextbook (data.mixture="tokens": 89% files, 11%
      # textbook-like functions); `--set data.mixture=weights` gives equal shares instead.
      "codetextbook": [{"path": data.filtered, "weight": 1.0, "name": "filtered"},
                       {"path": data.textbook, "weight": 1.0, "name": "textbook"}],
  }
  runs = []
  for size, dims in s["sizes"].items():
    model = {f"model.{k}": v for k, v in dims.items()}
    for steps in s["budgets"]:
      for seed in s["seeds"]:
        tag = f"{size}_{steps}_s{seed}"
        for family, sources in columns.items():
          runs.append({"name": f"{family}_{tag}", "family": family, "seed": seed,
                       "data.shuffle_seed": seed, "data.sources": sources,
                       **model, **_schedule(steps, evals=1 if arg == "ci" else 2)})
        ft = s["finetune_steps"]
        runs.append({"name": f"codetextbook_exercises_{tag}", "family": "codetextbook_exercises",
                     "seed": seed, "data.shuffle_seed": seed,
                     "data.sources": [{"path": data.exercises, "weight": 1.0,
                                       "name": "exercises"}],
                     "data.packing": "document", "init_from": f"{{run:codetextbook_{tag}}}/export",
                     # Paper §2.3: the finetune's LR is 10x below pretraining's.
                     "optimizer.peak_lr": 3e-4, "optimizer.weight_decay": 0.01,
                     **model, **_schedule(ft, evals=1)})
  return runs
