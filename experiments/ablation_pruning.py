"""The pruning study of paper Table 3: finetune phi-1 on CodeExercises pruned at AST match rate
tau in {0.95, 0.9, 0.85, 0.8} (plus the unpruned baseline, which is phi-1), then compare HumanEval
pass@1 on all, "similar" and "non-similar" problems.

Table 3's rows are the taus; at each, HumanEval splits into "similar" problems (some exercise close
to them in the unpruned CodeExercises) and the rest, and its columns give pass@1 on each part and
in total for phi-1 (our `unpruned` run, split at every tau), phi-1 retrained on the data pruned at
that tau (our `tau_<t>` runs) and StarCoder-Prompted (paper figures only; not run here). Pruning
removes 42.5K (tau 0.95) to 354K (tau 0.8) of the 879.5K exercises. Each run is the phi-1 finetune
recipe (experiments/recipes.py: 6,000 steps, batch 256, LR 1e-4) from the same phi-1-base export;
only the exercises differ.

1. Pruned copies against HumanEval, as Table 3 (data_gen/decontaminate.py writes
   DIR/pruned/tau_<t>/ record shards and report.json):
     python -m data_gen decontaminate --input data/exercises --bench humaneval \
         --out data/exercises_decontaminated
2. The runs, each evaluated on HumanEval after training (`--dry-run`: their compute, and the MFU
   the paper's "7 more hours on 8 A100" per finetune implies):
     python -m experiments.sweep experiments/ablation_pruning.py --eval humaneval [--slurm DIR]
3. Table 3, ours beside the paper's:
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
from experiments import cpu_switch, grid
from phi1.model import Phi1Config

TAUS = (0.95, 0.9, 0.85, 0.8)
# Paper Table 3, HumanEval pass@1 (%) as (similar, non-similar, total) per tau, and the number of
# similar problems; removed exercises are given only at the ends of the range (§5).
PAPER_TABLE3 = {
    "n_similar": {0.95: 71, 0.9: 93, 0.85: 106, 0.8: 116},
    "removed": {0.95: 42_500, 0.8: 354_000},
    "phi-1": {0.95: (81.7, 26.9, 50.6), 0.9: (63.4, 33.8, 50.6), 0.85: (62.3, 29.3, 50.6),
              0.8: (59.5, 29.2, 50.6)},
    "retrained": {0.95: (74.6, 32.3, 50.6), 0.9: (51.6, 36.6, 45.1), 0.85: (52.8, 34.5, 46.3),
                  0.8: (52.6, 27.1, 45.1)},
    "StarCoder-Prompted": {0.95: (57.7, 29.0, 41.5), 0.9: (48.4, 32.4, 41.5),
                           0.85: (47.2, 31.0, 41.5), 0.8: (45.7, 31.2, 41.5)},
}
# Each run is one phi-1 finetune: "7 more hours on the same hardware" (8 A100s, §2.3).
PAPER_FINETUNE = {"a100_hours": 7 * 8, "what": "one phi-1 finetune, 7 h on 8 A100, §2.3"}
PRUNED = "data/exercises_decontaminated"  # `decontaminate --out` of the full CodeExercises
PRUNED_CPU = "runs/decontaminated_demo"  # `decontaminate --out` of the demo exercises


def pruned_path(decontaminated_dir: str, tau: float) -> str:
  """Where `python -m data_gen decontaminate --out DIR` writes the copy pruned at tau (a
  directory of record shards with manifest.json, which phi1.data reads as a source)."""
  return os.path.join(decontaminated_dir, "pruned", f"tau_{tau}")


def get_config(arg: str = ""):
  """The phi-1 finetune recipe on the unpruned exercises (the baseline run)."""
  c = recipes.finetune(Phi1Config.phi1(), init_from="runs/phi1_base/export")
  if cpu_switch.is_cpu(arg, "ablation_pruning"):
    c = recipes.cpu_size(c, "finetune")
    c.data.packing = "document"  # exercises are short: one per segment (as experiments/cpu_demo.py)
  return c


def get_sweep(arg: str = ""):
  cpu = cpu_switch.is_cpu(arg, "ablation_pruning")
  base = get_config(arg)
  runs = []
  if cpu:  # the tiny model has no phi-1-base: pretrain one first
    pretrain = recipes.cpu_size(recipes.pretrain(Phi1Config.phi1()), "pretrain")
    runs.append({"name": "base", "family": "pretrain", **grid.config_diff(base, pretrain)})
  init = {"init_from": "{run:base}/export"} if cpu else {"paper": PAPER_FINETUNE}
  runs.append({"name": "unpruned", "family": "pruning", **init})
  for tau in TAUS:
    source = {"path": pruned_path(PRUNED_CPU if cpu else PRUNED, tau), "weight": 1.0,
              "name": f"exercises_tau_{tau}"}
    runs.append({"name": f"tau_{tau}", "family": "pruning", "data.sources": [source], **init})
  return runs


def table3(root, decontaminated_dir, bench: str = "humaneval") -> list[dict]:
  """Table 3's rows: for every tau, pass@1 (%) on similar, non-similar and all problems of phi-1
  (the `unpruned` run) and of the run retrained on the data pruned at that tau, each beside the
  paper's. Reads each run's eval_<bench>/samples.jsonl (sweep --eval) and the decontamination
  report.json (the similar / non-similar split at each tau)."""
  report_path = pathlib.Path(decontaminated_dir) / "report.json"
  if not report_path.is_file():
    raise FileNotFoundError(f"{report_path} not found: run `python -m data_gen decontaminate "
                            f"--bench {bench} --out {decontaminated_dir}` first")
  report = json.loads(report_path.read_text())
  missing = [t for t in TAUS if str(t) not in report["taus"]]
  if missing:
    raise ValueError(f"{report_path} has no results at tau {missing} (it has "
                     f"{sorted(report['taus'])}); rerun decontaminate with --taus "
                     + ",".join(map(str, TAUS)))
  passed = {run: _passed(pathlib.Path(root) / run / f"eval_{bench}" / "samples.jsonl")
            for run in ["unpruned"] + [f"tau_{t}" for t in TAUS]}
  rows = []
  for tau in TAUS:
    entry = report["taus"][str(tau)]
    split = entry["split"][bench]
    for model, run in (("phi-1", "unpruned"), ("retrained", f"tau_{tau}")):
      results = passed[run]
      row = {"tau": tau, "model": model, "run": run, "removed": entry["removed"],
             "paper_removed": PAPER_TABLE3["removed"].get(tau),
             "n_similar": len(split["similar"]), "paper_n_similar": PAPER_TABLE3["n_similar"][tau]}
      for column, ids in (("similar", split["similar"]), ("non_similar", split["non_similar"]),
                          ("total", results)):
        row[column], row[f"n_{column}_scored"] = _rate(results, ids)
      row.update(zip(("paper_similar", "paper_non_similar", "paper_total"),
                     PAPER_TABLE3[model][tau]))
      rows.append(row)
  return rows


def _passed(samples: pathlib.Path) -> dict[str, list[bool]]:
  """task id -> pass/fail of each sample ({} when the run has not been evaluated)."""
  passed = {}
  if samples.is_file():
    for line in samples.read_text().splitlines():
      row = json.loads(line)
      passed.setdefault(str(row["task_id"]), []).append(bool(row["passed"]))
  return passed


def _rate(passed: dict, ids) -> tuple[float | None, int]:
  """(mean pass@1 in % over the ids that were evaluated, how many there were)."""
  scored = [sum(passed[t]) / len(passed[t]) for t in map(str, ids) if t in passed]
  return (100 * sum(scored) / len(scored), len(scored)) if scored else (None, 0)


def format_table3(rows: list[dict]) -> str:
  """Table 3 as aligned text, "ours / paper" in each cell."""
  pct = lambda x: "-" if x is None else f"{x:.1f}"
  header = ("tau", "model", "removed / paper", "similar n / paper", "similar %", "non-similar %",
            "total %")
  cells = [(str(r["tau"]), r["model"], f"{r['removed']} / {r['paper_removed'] or '-'}",
            f"{r['n_similar']} / {r['paper_n_similar']}",
            f"{pct(r['similar'])} / {r['paper_similar']}",
            f"{pct(r['non_similar'])} / {r['paper_non_similar']}",
            f"{pct(r['total'])} / {r['paper_total']}") for r in rows]
  widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
           for row in [header, *cells]]
  lines.append("StarCoder-Prompted (paper only; similar / non-similar / total %): " + "; ".join(
      f"tau {t}: {s} / {n} / {a}" for t, (s, n, a) in PAPER_TABLE3["StarCoder-Prompted"].items()))
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m experiments.ablation_pruning RUNS_ROOT DECONTAMINATED_DIR")
  try:
    print(format_table3(table3(sys.argv[1], sys.argv[2])))
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"ablation_pruning: {e}")
