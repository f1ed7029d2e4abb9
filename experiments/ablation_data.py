"""The data ablation of paper Figure 2.1: {The Stack+ (unfiltered), CodeTextbook (filtered code +
synthetic textbooks), CodeTextbook -> CodeExercises finetune} along its compute axis:

  group          model   tokens seen (steps of 1024 x 2048)                paper
  350m_26b       350M    26B  (12,400 steps)                               -
  350m_76b       350M    76B  (36,000 steps)                               -
  1.3b           1.3B    Stack+ 76B (36,000 steps); CodeTextbook 51B       1,090 / 770 A100-hours
                         (phi-1-base: step 24,000 of the 36,000-step schedule)

Within a group only the data differ. A run's LR schedule ends at its own last step, except
phi-1-base's (the paper stops it at 24,000 of 36,000); `--set steps=N` moves the end with it. The
finetune runs follow the phi-1 recipe (6,000 steps, batch 256, LR 1e-4) from their group's
CodeTextbook export. Paper §2.1 also quotes 350M HumanEval pass@1 of 12.19% on unfiltered Stack+
after 96K steps and 20.12% on CodeTextbook.

  python -m experiments.sweep experiments/ablation_data.py --dry-run          # compute, explained
  python -m experiments.sweep experiments/ablation_data.py --eval humaneval,mbpp --slurm slurm/data
  python -m experiments.sweep experiments/ablation_data.py --only codetextbook_350m_26b   # one run
  python -m experiments.plot runs/ablation_data/registry.csv --out runs/ablation_data/plots

CPU switch (`:cpu`, minutes): sizes d64 / d128 instead of 350M / 1.3B and 25 / 75 steps (50 of 75
for the CodeTextbook d128 run) instead of 26B / 76B tokens; the standard library stands in for The
Stack+, the standard library plus its exercise-shaped functions for CodeTextbook, and those
exercises for CodeExercises (phi1/demo_corpus.py):
  python -m experiments.sweep experiments/ablation_data.py:cpu
"""

from experiments import recipes
from experiments import cpu_switch, grid
from phi1.model import Phi1Config

# The Python subset of deduplicated The Stack + StackOverflow, unfiltered (paper §2). Point it at
# your copy with --set data.sources=... or edit here.
STACK_PLUS = [{"path": "data/stack_plus", "weight": 1.0, "name": "stack_plus"}]
ARCH_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "rotary_dim", "max_seq_len")
SIZES = {"350m": Phi1Config.phi1_small(), "1.3b": Phi1Config.phi1()}
CPU_SIZES = {"350m": Phi1Config.tiny(vocab_size=4096, max_seq_len=1024, d_model=64, n_heads=2,
                                     d_ff=256),
             "1.3b": Phi1Config.tiny(vocab_size=4096, max_seq_len=1024)}
# Figure 2.1's groups: (group, size, {data: (steps, schedule_steps or 0 = steps, paper)}).
# 12,400 and 36,000 steps of 2^21 tokens are 26.0B and 75.5B tokens.
PHI1_BASE_STEPS = 24_000  # 50.3B tokens ("51B"), of the 36,000-step schedule (paper §2.3)
GROUPS = (
    ("350m_26b", "350m", {"stackplus": (12_400, 0, None), "codetextbook": (12_400, 0, None)}),
    ("350m_76b", "350m", {"stackplus": (36_000, 0, None), "codetextbook": (36_000, 0, None)}),
    ("1.3b", "1.3b", {
        "stackplus": (36_000, 0,
                      {"a100_hours": 1090, "what": "1.3B Stack+, 76B tokens, Fig. 2.1"}),
        "codetextbook": (PHI1_BASE_STEPS, 36_000,
                         {"a100_hours": 770, "what": "phi-1-base, 51B tokens, §2.3 and Fig. 2.1"}),
    }),
)
# Finetuning phi-1 "takes 7 more hours on the same hardware" (8 A100s, §2.3).
PHI1_FINETUNE_PAPER = {"a100_hours": 7 * 8, "what": "phi-1 finetune, 7 h on 8 A100 (§2.3)"}
CPU_STEPS = {12_400: 25, 36_000: 75, PHI1_BASE_STEPS: 50}
CPU_GROUPS = {"350m_26b": "d64_25steps", "350m_76b": "d64_75steps", "1.3b": "d128"}


def get_config(arg: str = ""):
  """The base every run overrides: CodeTextbook pretraining of phi-1-small (350M)."""
  c = recipes.pretrain(Phi1Config.phi1_small())
  return recipes.cpu_size(c, "pretrain") if cpu_switch.is_cpu(arg, "ablation_data") else c


def _data(cpu: bool) -> dict:
  if not cpu:
    return {"stackplus": STACK_PLUS, "codetextbook": recipes.CODETEXTBOOK}
  sources = recipes.demo_sources(recipes.demo_corpus())
  return {"stackplus": [sources["stdlib"]],
          "codetextbook": [sources["stdlib"], sources["exercises"]]}


def get_sweep(arg: str = ""):
  cpu = cpu_switch.is_cpu(arg, "ablation_data")
  base = get_config(arg)
  sizes, data = (CPU_SIZES if cpu else SIZES), _data(cpu)
  runs = []
  for group, size, budgets in GROUPS:
    model, group = sizes[size], (CPU_GROUPS[group] if cpu else group)
    arch = {f"model.{k}": getattr(model, k) for k in ARCH_KEYS if base.model[k] != getattr(model, k)}
    for name, (steps, schedule, paper) in budgets.items():
      if cpu:
        steps, schedule = CPU_STEPS[steps], CPU_STEPS.get(schedule, 0)
      run = {"name": f"{name}_{group}", "family": name, "data.sources": data[name], **arch,
             "steps": steps, "optimizer.schedule_steps": schedule}
      runs.append({**run, **({"paper": paper} if paper and not cpu else {})})
    finetune = recipes.finetune(model, init_from="")
    if cpu:
      finetune = recipes.cpu_size(finetune, "finetune")
    finetune.model.update({k: getattr(model, k) for k in ARCH_KEYS})
    paper = PHI1_FINETUNE_PAPER if size == "1.3b" and not cpu else None
    runs.append({"name": f"codetextbook_exercises_{group}", "family": "codetextbook_exercises",
                 **grid.config_diff(base, finetune),
                 "init_from": f"{{run:codetextbook_{group}}}/export",
                 **({"paper": paper} if paper else {})})
  return runs
