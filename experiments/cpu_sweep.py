"""A scaling sweep that runs on a laptop CPU: 2 model sizes x 2 data mixtures, a few minutes in all.

The shape of the paper's data ablation (Figure 2.1: same models, different data) in miniature, on
the CPU demo corpus (phi1/demo_corpus.py: the Python standard library and exercise-shaped
functions cut from it). Every run is evaluated on the same held-out standard-library files, every
`eval_every` steps, so each run gives a loss-vs-compute curve; experiments/plot.py fits
L(C) = a * C^-b (+ c) per mixture.

  python -m experiments.sweep experiments/cpu_sweep.py --root runs/cpu_sweep
  python -m experiments.plot runs/cpu_sweep/registry.csv --out runs/cpu_sweep/plots
  python -m experiments.sweep experiments/cpu_sweep.py --dry-run        # the compute, explained
"""


from experiments import recipes
from phi1.model import Phi1Config

SIZES = {  # head dim 32, rotary on 16 of it, as Phi1Config.tiny
    "d64": dict(d_model=64, n_layers=2, n_heads=2, d_ff=256),
    "d128": dict(d_model=128, n_layers=2, n_heads=4, d_ff=512),
}


def mixtures() -> dict:
  sources = recipes.demo_sources(recipes.demo_corpus())
  return {"stdlib": [sources["stdlib"]],
          "stdlib+exercises": [sources["stdlib"], sources["exercises"]]}


def get_config(arg: str = ""):
  del arg  # CPU-sized already: "" and "cpu" are the same
  c = recipes.cpu_size(recipes.pretrain(Phi1Config.phi1_small()), "pretrain")
  c.steps, c.batch_size, c.seq_len = 80, 8, 128
  c.optimizer.peak_lr, c.optimizer.warmup_steps, c.optimizer.schedule_steps = 3e-3, 8, 80
  c.log_every, c.eval_every, c.eval_batches = 5, 10, 4
  c.checkpoint_every, c.keep_last, c.keep_every = 80, 1, 0
  c.model.attn_dropout = c.model.resid_dropout = 0.0  # too few steps for dropout to matter
  return c


def get_sweep(arg: str = ""):
  del arg
  runs = []
  for mixture, sources in mixtures().items():
    for size, dims in SIZES.items():
      runs.append({"name": f"{mixture.replace('+', '_')}_{size}", "family": mixture,
                   "data.sources": sources, **{f"model.{k}": v for k, v in dims.items()}})
  return runs
