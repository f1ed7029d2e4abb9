"""The pruning study of paper Table 3: finetune phi-1 on CodeExercises pruned at AST match rate
tau in {0.95, 0.9, 0.85, 0.8} (plus the unpruned baseline), then compare HumanEval pass@1 on all,
"similar" and "non-similar" problems.

Paper Table 3 (HumanEval pass@1 of phi-1 retrained on the pruned data): 50.6 / 45.1 / 46.3 / 45.1%
at tau = 0.95 / 0.9 / 0.85 / 0.8; pruning removes 42.5K to 354K of the 879.5K exercises. Each run
here is the phi-1 finetune recipe (experiments/recipes.py: 6,000 steps, batch 256, LR 1e-4) from
the same phi-1-base export; only the exercises differ.

1. Pruned copies (data_gen/decontaminate.py writes DIR/pruned/tau_<t>/records.jsonl, report.json):
     python -m data_gen decontaminate --input data/exercises --bench humaneval,mbpp \
         --out data/exercises_decontaminated
2. The runs, each evaluated on HumanEval after training:
     python -m experiments.sweep experiments/ablation_pruning.py --eval humaneval [--slurm DIR]
3. Table 3 (pass@1 on all / similar / non-similar problems at each run's tau):
     python -m experiments.ablation_pruning runs/ablation_pruning data/exercises_decontaminated

CPU switch (`:cpu`): a tiny model pretrained first on the standard library (run `base`), finetuned
on the demo corpus's exercises pruned by the same command:
     python -m data_gen decontaminate --input ~/.cache/phi1/stdlib-*/exercises_train.jsonl \
         --bench humaneval --out runs/decontaminated_demo
     python -m experiments.sweep experiments/ablation_pruning.py:cpu --eval humaneval --eval-limit 20
"""

import json
import os
import pathlib
import sys

from experiments import recipes
from experiments import sweep
from phi1.model import Phi1Config

TAUS = (0.95, 0.9, 0.85, 0.8)
PRUNED = "data/exercises_decontaminated"  # `decontaminate --out` of the full CodeExercises
PRUNED_CPU = "runs/decontaminated_demo"  # `decontaminate --out` of the demo exercises


def _cpu(arg: str) -> bool:
  if arg not in ("", "cpu"):
    raise ValueError(f"ablation_pruning takes '' or 'cpu', got {arg!r}")
  return arg == "cpu"


def pruned_path(decontaminated_dir: str, tau: float) -> str:
  """Where `python -m data_gen decontaminate --out DIR` writes the copy pruned at tau."""
  return os.path.join(decontaminated_dir, "pruned", f"tau_{tau}", "records.jsonl")


def get_config(arg: str = ""):
  """The phi-1 finetune recipe on the unpruned exercises (the baseline run)."""
  c = recipes.finetune(Phi1Config.phi1(), init_from="runs/phi1_base/export")
  if _cpu(arg):
    c = recipes.cpu_size(c, "finetune")
    c.data.packing = "document"  # exercises are short: one per segment (as experiments/cpu_demo.py)
  return c


def get_sweep(arg: str = ""):
  cpu = _cpu(arg)
  base = get_config(arg)
  runs = []
  if cpu:  # the tiny model has no phi-1-base: pretrain one first
    pretrain = recipes.cpu_size(recipes.pretrain(Phi1Config.phi1()), "pretrain")
    runs.append({"name": "base", "family": "pretrain", **sweep.config_diff(base, pretrain)})
  init = {"init_from": "{run:base}/export"} if cpu else {}
  runs.append({"name": "unpruned", "family": "pruning", **init})
  for tau in TAUS:
    source = {"path": pruned_path(PRUNED_CPU if cpu else PRUNED, tau), "weight": 1.0,
              "name": f"exercises_tau_{tau}"}
    runs.append({"name": f"tau_{tau}", "family": "pruning", "data.sources": [source], **init})
  return runs


def table3(root, decontaminated_dir, bench: str = "humaneval") -> list[dict]:
  """pass@1 of each run on all, similar and non-similar problems at its own tau (the unpruned run
  is split at the loosest tau). Reads each run's eval_<bench>/samples.jsonl (sweep --eval)."""
  report = json.loads((pathlib.Path(decontaminated_dir) / "report.json").read_text())
  rows = []
  for run_dir in sorted(pathlib.Path(root).iterdir()):
    samples = run_dir / f"eval_{bench}" / "samples.jsonl"
    if not samples.is_file() or not run_dir.name.startswith(("tau_", "unpruned")):
      continue
    tau = run_dir.name.removeprefix("tau_") if run_dir.name != "unpruned" else str(min(TAUS))
    split = report["taus"][tau]["split"][bench]
    passed = {}
    for line in samples.read_text().splitlines():
      row = json.loads(line)
      passed.setdefault(str(row["task_id"]), []).append(bool(row["passed"]))
    def rate(ids):
      scored = [sum(passed[t]) / len(passed[t]) for t in map(str, ids) if t in passed]
      return (sum(scored) / len(scored), len(scored)) if scored else (None, 0)
    (all_rate, n_all), (sim, n_sim), (non, n_non) = (rate(passed), rate(split["similar"]),
                                                     rate(split["non_similar"]))
    rows.append({"run": run_dir.name, "tau": tau, "removed": report["taus"][tau]["removed"],
                 "pass@1": all_rate, "n": n_all, "similar": sim, "n_similar": n_sim,
                 "non_similar": non, "n_non_similar": n_non})
  return rows


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m experiments.ablation_pruning RUNS_ROOT DECONTAMINATED_DIR")
  for row in table3(sys.argv[1], sys.argv[2]):
    print(json.dumps(row))
