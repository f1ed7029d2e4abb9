"""The data ablation of paper Figure 2.1: {The Stack+ (unfiltered), CodeTextbook (filtered code +
synthetic textbooks), CodeTextbook -> CodeExercises finetune} x {350M, 1.3B}: six runs.

Every pretraining run uses the phi-1-base recipe (experiments/recipes.py: 24,000 steps of 1024 x
2048 tokens, ~50B tokens, of a 36,000-step schedule); only the data differs, so The Stack+ and
CodeTextbook meet at equal compute. (Figure 2.1 also shows other token budgets: add
`--set steps=N`. Paper §2.1 quotes 350M HumanEval pass@1 of 12.19% on unfiltered Stack+ after 96K
steps, 17.68% filtered after 36K, 20.12% with the synthetic textbooks added.) The finetune runs
follow the phi-1 recipe (6,000 steps, batch 256, LR 1e-4) from their size's CodeTextbook export.

  python -m experiments.sweep experiments/ablation_data.py --dry-run          # compute, explained
  python -m experiments.sweep experiments/ablation_data.py --eval humaneval,mbpp --slurm slurm/data
  python -m experiments.sweep experiments/ablation_data.py --only codetextbook_350m   # one run
  python -m experiments.plot runs/ablation_data/registry.csv --out runs/ablation_data/plots

CPU switch (`:cpu`, minutes): sizes d64 / d128 instead of 350M / 1.3B; the standard library stands
in for The Stack+, the standard library plus its exercise-shaped functions for CodeTextbook, and
those exercises for CodeExercises (phi1/demo_corpus.py):
  python -m experiments.sweep experiments/ablation_data.py:cpu
"""


from experiments import recipes
from experiments import sweep
from phi1.model import Phi1Config

# The Python subset of deduplicated The Stack + StackOverflow, unfiltered (paper §2). Point it at
# your copy with --set data.sources=... or edit here.
STACK_PLUS = [{"path": "data/stack_plus", "weight": 1.0, "name": "stack_plus"}]
ARCH_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "rotary_dim", "max_seq_len")
SIZES = {"350m": Phi1Config.phi1_small(), "1.3b": Phi1Config.phi1()}
CPU_SIZES = {"d64": Phi1Config.tiny(vocab_size=4096, max_seq_len=1024, d_model=64, n_heads=2,
                                    d_ff=256),
             "d128": Phi1Config.tiny(vocab_size=4096, max_seq_len=1024)}


def _cpu(arg: str) -> bool:
  if arg not in ("", "cpu"):
    raise ValueError(f"ablation_data takes '' or 'cpu', got {arg!r}")
  return arg == "cpu"


def get_config(arg: str = ""):
  """The base every run overrides: CodeTextbook pretraining of phi-1-small (350M)."""
  c = recipes.pretrain(Phi1Config.phi1_small())
  return recipes.cpu_size(c, "pretrain") if _cpu(arg) else c


def _data(cpu: bool) -> dict:
  if not cpu:
    return {"stackplus": STACK_PLUS, "codetextbook": recipes.CODETEXTBOOK}
  sources = recipes.demo_sources(recipes.demo_corpus())
  return {"stackplus": [sources["stdlib"]],
          "codetextbook": [sources["stdlib"], sources["exercises"]]}


def get_sweep(arg: str = ""):
  cpu = _cpu(arg)
  base = get_config(arg)
  runs = []
  for size, model in (CPU_SIZES if cpu else SIZES).items():
    arch = {f"model.{k}": getattr(model, k) for k in ARCH_KEYS if base.model[k] != getattr(model, k)}
    for data, sources in _data(cpu).items():
      runs.append({"name": f"{data}_{size}", "family": data, "data.sources": sources, **arch})
    finetune = recipes.finetune(model, init_from="")
    if cpu:
      finetune = recipes.cpu_size(finetune, "finetune")
    finetune.model.update({k: getattr(model, k) for k in ARCH_KEYS})
    runs.append({"name": f"codetextbook_exercises_{size}", "family": "codetextbook_exercises",
                 **sweep.config_diff(base, finetune),
                 "init_from": f"{{run:codetextbook_{size}}}/export"})
  return runs
