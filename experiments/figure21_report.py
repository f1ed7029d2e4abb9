"""The CPU Figure 2.1's figure and its one-line result, from a sweep root of experiments/figure21_cpu.py.

  python -m experiments.figure21_report runs/figure21 [more roots] [--out DIR]

Per (size, budget, data column): the mean and standard deviation over seeds of the final
`humaneval_solution_loss` (phi1/evals/solution_loss.py) and of the held-out standard-library loss.
A finetune run's compute is its pretraining run's plus its own. Writes figure21.png/.svg (solution
loss vs compute, one panel per size, error bars = one standard deviation over seeds) and
figure21.json, and prints a table and the gap line: at the largest budget of each size, how much
lower CodeTextbook (and + exercises) put the HumanEval solution loss than the raw files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from experiments import registry  # noqa: E402

COLUMNS = ("raw", "codetextbook", "codetextbook_exercises")
LABELS = {"raw": "raw files", "codetextbook": "CodeTextbook-like",
          "codetextbook_exercises": "+ exercises finetune"}
_NAME = re.compile(r"^(?P<family>.+)_(?P<size>d\d+)_(?P<steps>\d+)_s(?P<seed>\d+)$")


def cells(rows: list[dict]) -> dict:
  """{(size, steps, family): {"compute", "solution": [per seed], "eval": [per seed], "seeds"}}."""
  by_name = {r["name"]: r for r in rows}
  out = {}
  for row in rows:
    m = _NAME.match(row["name"])
    if not m or row.get("humaneval_solution_loss") is None or row.get("status") != "done":
      continue
    compute = row["flops"]
    if m["family"] == "codetextbook_exercises":
      parent = by_name.get(row["name"].replace("codetextbook_exercises_", "codetextbook_", 1))
      if parent is None or not parent.get("flops"):
        continue
      compute += parent["flops"]
    cell = out.setdefault((m["size"], int(m["steps"]), m["family"]),
                          {"compute": [], "solution": [], "eval": [], "seeds": []})
    cell["compute"].append(compute)
    cell["solution"].append(row["humaneval_solution_loss"])
    cell["eval"].append(row.get("final_eval_loss"))
    cell["seeds"].append(int(m["seed"]))
  return out


def _mean_std(values) -> tuple[float, float]:
  values = [v for v in values if v is not None]
  if not values:
    return float("nan"), float("nan")
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(table: dict) -> dict:
  """JSON-able rows, and per size the gaps at its largest budget."""
  rows = []
  for (size, steps, family), cell in sorted(table.items()):
    sol, sol_sd = _mean_std(cell["solution"])
    ev, ev_sd = _mean_std(cell["eval"])
    rows.append(dict(size=size, steps=steps, family=family, seeds=len(cell["seeds"]),
                     compute=statistics.fmean(cell["compute"]), solution_loss=sol,
                     solution_loss_sd=sol_sd, stdlib_eval_loss=ev, stdlib_eval_loss_sd=ev_sd))
  gaps = {}
  for size in sorted({r["size"] for r in rows}, key=lambda s: int(s[1:])):
    for steps in sorted({r["steps"] for r in rows if r["size"] == size}):
      here = {r["family"]: r for r in rows if r["size"] == size and r["steps"] == steps}
      if "raw" not in here:
        continue
      gaps[f"{size}_{steps}"] = {
          f: dict(gap=here["raw"]["solution_loss"] - here[f]["solution_loss"],
                  sd=(here["raw"]["solution_loss_sd"] ** 2 + here[f]["solution_loss_sd"] ** 2) ** 0.5)
          for f in COLUMNS[1:] if f in here}
  return {"rows": rows, "gaps": gaps}


def gap_line(result: dict) -> str:
  """One line: the gaps at the largest size and budget, with their seed spread."""
  if not result["gaps"]:
    return "figure 2.1 (CPU): no finished runs with a solution loss yet"
  key = max(result["gaps"], key=lambda k: (int(k.split("_")[0][1:]), int(k.split("_")[1])))
  size, steps = key.split("_")
  here = {r["family"]: r for r in result["rows"] if r["size"] == size and r["steps"] == int(steps)}
  raw = here["raw"]
  parts = [f"raw {raw['solution_loss']:.3f}±{raw['solution_loss_sd']:.3f}"]
  for f, g in result["gaps"][key].items():
    parts.append(f"{LABELS[f]} {here[f]['solution_loss']:.3f}±{here[f]['solution_loss_sd']:.3f} "
                 f"({-g['gap']:+.3f}±{g['sd']:.3f})")
  return (f"figure 2.1 (CPU), {size} x {steps} steps, {raw['seeds']} seeds: HumanEval solution "
          f"loss (nats/token) " + " -> ".join(parts))


def plot(result: dict, out_dir) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  sizes = sorted({r["size"] for r in result["rows"]}, key=lambda s: int(s[1:]))
  fig, axes = plt.subplots(1, max(len(sizes), 1), figsize=(5 * max(len(sizes), 1), 4),
                           squeeze=False, sharey=True)
  for ax, size in zip(axes[0], sizes):
    for family in COLUMNS:
      points = sorted((r["compute"], r["solution_loss"], r["solution_loss_sd"])
                      for r in result["rows"] if r["size"] == size and r["family"] == family)
      if points:
        x, y, e = zip(*points)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=LABELS[family])
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlap
    ax.set_title(f"{size}", fontsize=10)
    ax.set_xlabel("training compute (FLOPs)")
    ax.grid(alpha=0.3, which="both")
  axes[0][0].set_ylabel("HumanEval solution loss (nats/token)")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Figure 2.1 on a CPU: same models, different data (mean ± sd over seeds)",
               fontsize=10)
  fig.tight_layout()
  paths = [out / "figure21.png", out / "figure21.svg"]
  for path in paths:
    fig.savefig(path, dpi=130)
  plt.close(fig)
  (out / "figure21.json").write_text(json.dumps(result, indent=2))
  return [str(p) for p in paths] + [str(out / "figure21.json")]


def report(roots, out_dir=None) -> tuple[dict, str, list[str]]:
  """`roots`: one sweep root or a list of them (e.g. one per size, run side by side)."""
  roots = [roots] if isinstance(roots, (str, pathlib.Path)) else list(roots)
  result = summary(cells(registry.collect(roots)))
  return result, gap_line(result), plot(result, out_dir or roots[0])


def format_table(result: dict) -> str:
  lines = ["size  steps  column                  seeds  compute    solution loss   stdlib eval loss"]
  for r in result["rows"]:
    lines.append(f"{r['size']:<5} {r['steps']:<6} {r['family']:<23} {r['seeds']:<6} "
                 f"{r['compute']:<10.3g} {r['solution_loss']:.3f} ± {r['solution_loss_sd']:.3f}   "
                 f"{r['stdlib_eval_loss']:.3f} ± {r['stdlib_eval_loss_sd']:.3f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.figure21_report", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("roots", nargs="+", help="sweep root(s) of experiments/figure21_cpu.py")
  p.add_argument("--out", help="where the figure goes (default: the first root)")
  args = p.parse_args(argv)
  try:
    result, line, files = report(args.roots, args.out)
  except FileNotFoundError as e:
    print(f"figure21_report: {e}", file=sys.stderr)
    return 2
  print(format_table(result))
  print("wrote " + ", ".join(files))
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
