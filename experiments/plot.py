"""Scaling curves from registries: loss vs compute and vs tokens, a fitted power law, pass@1.

  python -m experiments.plot runs/cpu_sweep/registry.csv [more registries or sweep roots ...]
      --out DIR [--offset] [--fit-on frontier|final] [--loss eval|train]

Each registry (a CSV/Parquet written by experiments/registry.py, or a sweep root, read on the fly)
is one sweep; its runs are grouped into families by the `family` column (experiments/sweep.py sets
it per run), and every family of every sweep shares one set of axes, so sweeps compare on one plot.
Per family the plot fits
    L(C) = a * (C / C0)^-b  (+ c with --offset)          C = training FLOPs (phi1/flops.py)
by least squares on log L (relative errors: the losses of a scaling curve span a decade), with
C0 the geometric mean of the points' compute so a and b are weakly correlated; A = a * C0^b is the
coefficient for C in FLOPs. Uncertainties are one standard deviation from the covariance
scipy.optimize.curve_fit returns. Points: `--fit-on frontier` (default) takes every logged eval of
every run in the family (from metrics.jsonl; compute at step s is s/steps of the run's) and keeps
the compute-efficient frontier, the lowest loss reached at each compute (Kaplan et al. 2020,
Hoffmann et al. 2022); `--fit-on final` takes one point per run (its final loss).
Writes loss_vs_compute, loss_vs_tokens and (when any run has them) pass_at_1_vs_compute and
solution_loss_vs_compute (benchmark reference-solution loss, logged during training or by
`phi1 eval --solution-loss`) as PNG and SVG, and fits.json.

Reading aids: every run's line carries its name; the points a fit used are ringed; a fit is drawn
only over the compute it was fitted on; families are in natural order (d64 before d128); log
axes spanning less than a decade label 1-2-5 ticks (1e15, 2e15, 5e15); pass@1 sits on a [0, 1]
axis with binomial standard errors sqrt(p(1-p)/n), n = problems scored (in the legend). Fitting
intermediate evals of runs whose learning rate decays over the run prints a warning (and records
it in fits.json): before the decay ends a run's loss is above what a run of that length would
reach, which flattens the fitted exponent; `--fit-on final` avoids it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from experiments import registry  # noqa: E402


@dataclasses.dataclass
class PowerLawFit:
  """L(C) = a * (C / c_ref)^-b + c, with one-sigma errors."""
  a: float
  b: float
  c: float
  a_err: float
  b_err: float
  c_err: float
  c_ref: float
  n_points: int
  offset: bool

  def __call__(self, compute):
    return self.a * (np.asarray(compute, float) / self.c_ref) ** -self.b + self.c

  @property
  def coefficient(self) -> float:
    """A in L = A * C^-b (+ c), C in FLOPs."""
    return self.a * self.c_ref ** self.b

  def describe(self) -> str:
    text = (f"L = {self.a:.4g}(±{self.a_err:.2g}) * (C/{self.c_ref:.3g})^-{self.b:.4g}"
            f"(±{self.b_err:.2g})")
    return text + (f" + {self.c:.4g}(±{self.c_err:.2g})" if self.offset else "")


def fit_power_law(compute, loss, *, offset: bool = False) -> PowerLawFit:
  """Least-squares fit of log L; needs more points than parameters (for the covariance)."""
  from scipy.optimize import curve_fit
  C, L = np.asarray(compute, float), np.asarray(loss, float)
  keep = np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0)
  C, L = C[keep], L[keep]
  n_params = 3 if offset else 2
  if len(C) <= n_params:
    raise ValueError(f"a power law{' with offset' if offset else ''} needs more than {n_params} "
                     f"points with positive compute and loss to give uncertainties; got {len(C)}")
  c_ref = float(np.exp(np.mean(np.log(C))))
  logx, logL = np.log(C / c_ref), np.log(L)
  (log_a, b), cov = curve_fit(lambda x, log_a, b: log_a - b * x, logx, logL, p0=(logL.mean(), 0.1))
  a, (log_a_err, b_err) = math.exp(log_a), np.sqrt(np.diag(cov))
  if not offset:
    return PowerLawFit(a, b, 0.0, a * log_a_err, b_err, 0.0, c_ref, len(C), False)

  def model(x, a, b, c):
    return np.log(a * np.exp(-b * x) + c)

  # Start from the offset-free fit above a floor at half the smallest loss.
  c0 = 0.5 * L.min()
  (log_a0, b0), _ = curve_fit(lambda x, la, bb: la - bb * x, logx, np.log(L - c0),
                              p0=(log_a, max(b, 1e-3)))
  params, cov = curve_fit(model, logx, logL, p0=(math.exp(log_a0), max(b0, 1e-3), c0),
                          bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, L.min()]), max_nfev=20000)
  errors = np.sqrt(np.diag(cov))
  return PowerLawFit(*map(float, params), *map(float, errors), c_ref, len(C), True)


def frontier(points) -> list[tuple[float, float]]:
  """The lowest-loss envelope: points whose loss beats every point of smaller or equal compute."""
  out, best = [], math.inf
  for compute, loss in sorted(points):
    if loss < best:
      out.append((compute, loss))
      best = loss
  return out


# ------------------------------------------------------------------------------------------ inputs
def load(sources) -> list[dict]:
  """Rows of every registry (file, or sweep root read on the fly), tagged with `sweep_label`."""
  rows = []
  for source in map(pathlib.Path, sources):
    if source.is_dir():
      found = registry.collect([source])
      label = source.name
    else:
      found = registry.read(source)
      label = source.parent.name if source.stem == "registry" else source.stem
    for row in found:
      row["sweep_label"] = label
    rows += found
  if not rows:
    raise ValueError(f"no runs in {list(map(str, sources))}")
  return rows


def curve(row: dict, loss: str) -> list[tuple[float, float, float]]:
  """(tokens, FLOPs, loss) at every logged step of a run, from its metrics.jsonl; [] if gone."""
  return metric_curve(row, "eval_loss" if loss == "eval" else "loss")


def metric_curve(row: dict, key: str) -> list[tuple[float, float, float]]:
  """(tokens, FLOPs, value) at every step of a run that logged `key` in its metrics.jsonl."""
  path = pathlib.Path(row.get("workdir") or "") / "metrics.jsonl"
  if not row.get("tokens") or not path.is_file():
    return []
  flops_per_token = row["flops"] / row["tokens"]
  tokens_per_step = row["tokens"] / row["steps"]
  out = []
  for record in registry._read_jsonl(path):
    if record.get(key) is not None and record["step"] <= row["steps"]:
      tokens = record["step"] * tokens_per_step
      out.append((tokens, tokens * flops_per_token, float(record[key])))
  return out


def final_loss(row: dict, loss: str):
  if loss == "train":
    return row.get("final_loss")
  return row.get("final_eval_loss")


def natural_key(text: str) -> list:
  """'d64' < 'd128', 'n_layers-2' < 'n_layers-10': digits compare as numbers."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
          for part in re.split(r"(\d+)", str(text)) if part]


def families(rows) -> dict[str, list[dict]]:
  """Family label -> its runs, both in natural order."""
  groups = {}
  several = len({r["sweep_label"] for r in rows}) > 1
  for row in rows:
    family = row.get("family") or row["sweep_label"]
    label = f"{row['sweep_label']}/{family}" if several and family != row["sweep_label"] else family
    groups.setdefault(label, []).append(row)
  return {label: sorted(groups[label], key=lambda r: natural_key(r.get("name") or ""))
          for label in sorted(groups, key=natural_key)}


def decaying_schedule(row: dict) -> bool:
  """The run's learning rate decays (end_lr < peak_lr) over its own steps (its config.json)."""
  try:
    config = json.loads((pathlib.Path(row.get("workdir") or "") / "config.json").read_text())
    opt = config["optimizer"]
    return float(opt["end_lr"]) < float(opt["peak_lr"]) and int(opt["warmup_steps"]) < int(
        config["steps"])
  except (OSError, KeyError, ValueError, TypeError):
    return False


def readable_log_axis(axis):
  """Tick labels a reader can use on a log axis: decades as 1e15 (not 10^15 in mathtext), and
  1-2-5 ticks labelled too when the data spans less than about a decade."""
  import matplotlib.ticker as ticker
  lo, hi = sorted(axis.get_view_interval())
  subs = (1.0, 2.0, 5.0) if lo > 0 and hi / lo < 30 else (1.0,)
  axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _compact(v)))
  axis.set_minor_formatter(ticker.NullFormatter())


def _compact(value: float) -> str:
  if value <= 0:
    return ""
  if 1e-3 <= value < 1e4:
    return f"{value:g}"
  mantissa, exponent = f"{value:.0e}".split("e")
  return f"{mantissa}e{int(exponent)}"


# ------------------------------------------------------------------------------------------- plots
def plot(sources, out_dir, *, loss: str = "eval", offset: bool = False,
         fit_on: str = "frontier", keep_figures: bool = False) -> dict:
  """Writes the figures and fits.json; `keep_figures` returns the matplotlib figures (by file stem)
  under "figures", open, for a caller that inspects them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  if loss not in ("eval", "train") or fit_on not in ("frontier", "final"):
    raise ValueError(f"loss must be eval|train and fit_on frontier|final; got {loss}, {fit_on}")
  rows = load(sources)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  groups = families(rows)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  markers = "osD^vP*X"
  sweep_marker = {s: markers[i % len(markers)]
                  for i, s in enumerate(dict.fromkeys(r["sweep_label"] for r in rows))}
  fits, written = {}, []
  ylabel = f"{loss} loss (nats/token)"

  fig_c, ax_c = plt.subplots(figsize=(7, 5))
  fig_t, ax_t = plt.subplots(figsize=(7, 5))
  for i, (label, members) in enumerate(groups.items()):
    color = colors[i % len(colors)]
    curve_points, intermediate = [], False
    for row in members:
      points = curve(row, loss)
      curve_points += [(c, l) for _, c, l in points]
      intermediate |= any(t < row["tokens"] for t, _, _ in points) and decaying_schedule(row)
      if points:
        tokens, compute, losses = zip(*points)
        ax_c.plot(compute, losses, color=color, alpha=0.35, lw=1, gid=f"run:{row['name']}")
        ax_t.plot(tokens, losses, color=color, alpha=0.35, lw=1, gid=f"run:{row['name']}")
        for ax, x in ((ax_c, compute[-1]), (ax_t, tokens[-1])):  # name each run's line
          ax.annotate(row["name"], (x, losses[-1]), fontsize=7, alpha=0.7, color=color,
                      xytext=(3, 3), textcoords="offset points")
      final = final_loss(row, loss)
      if final is not None and row.get("flops"):
        marker = sweep_marker[row["sweep_label"]]
        ax_c.scatter(row["flops"], final, color=color, marker=marker, zorder=3)
        ax_t.scatter(row["tokens"], final, color=color, marker=marker, zorder=3)
        if not points:
          for ax, x in ((ax_c, row["flops"]), (ax_t, row["tokens"])):
            ax.annotate(row["name"], (x, final), fontsize=7, alpha=0.7, color=color,
                        xytext=(3, 3), textcoords="offset points")
    finals = [(r["flops"], final_loss(r, loss)) for r in members
              if r.get("flops") and final_loss(r, loss) is not None]
    use_curves = fit_on == "frontier" and curve_points
    fit_points = frontier(curve_points) if use_curves else finals
    ax_c.scatter([], [], color=color, label=label)
    try:
      fit = fit_power_law(*zip(*fit_points), offset=offset) if fit_points else None
    except (ValueError, RuntimeError) as e:  # too few points, or no convergence: plot, say why
      print(f"plot: no fit for {label}: {e}", file=sys.stderr)
      fit = None
    if fit is not None:
      # Ring the points the fit used; draw the fit over their compute range only.
      ax_c.scatter(*zip(*fit_points), s=70, facecolors="none", edgecolors=color, lw=1.2,
                   zorder=4, gid=f"fit-points:{label}", label=f"{label}: fitted points")
      grid = np.geomspace(min(c for c, _ in fit_points), max(c for c, _ in fit_points), 100)
      ax_c.plot(grid, fit(grid), "--", color=color, gid=f"fit:{label}",
                label=f"{label} fit: b = {fit.b:.3f} ± {fit.b_err:.3f}")
      fits[label] = {**dataclasses.asdict(fit), "A (C in FLOPs)": fit.coefficient,
                     "formula": fit.describe(), "fit_on": fit_on, "loss": loss,
                     "points": [list(p) for p in fit_points]}
      if use_curves and intermediate:
        warning = (f"{label}: the fit uses intermediate evals of runs whose learning rate decays "
                   "over the run; before the decay ends their loss is above what a run of that "
                   "length would reach (the exponent comes out flatter). Use --fit-on final")
        print(f"plot: warning: {warning}", file=sys.stderr)
        fits[label]["warning"] = warning
  for ax, xlabel in ((ax_c, "training compute C (FLOPs, 6N + attention)"),
                     (ax_t, "training tokens")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 6.5, not 6.5 x 10^0
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    readable_log_axis(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
  ax_c.set_title(f"loss vs compute; fit L = a (C/C0)^-b{' + c' if offset else ''} on the "
                 f"{'compute frontier' if fit_on == 'frontier' else 'final points'}", fontsize=9)
  ax_t.set_title("loss vs tokens (lines: logged evals; markers: final)", fontsize=9)
  ax_c.legend(fontsize=8)
  figures = {"loss_vs_compute": fig_c, "loss_vs_tokens": fig_t}
  for fig, name in ((fig_c, "loss_vs_compute"), (fig_t, "loss_vs_tokens")):
    written += _save(fig, out / name)

  for metric, ylabel, stem in (
      ("pass@1", "pass@1 (protocol in the registry)", "pass_at_1_vs_compute"),
      ("solution_loss", "reference-solution loss (nats/token)", "solution_loss_vs_compute")):
    fig = _benchmark_figure(plt, groups, metric, ylabel, colors, markers)
    if fig is not None:
      written += _save(fig, out / stem)
      figures[stem] = fig
  (out / "fits.json").write_text(json.dumps(fits, indent=2))
  written.append(out / "fits.json")
  result = {"fits": fits, "files": [str(p) for p in written]}
  if keep_figures:
    result["figures"] = figures
  else:
    plt.close("all")
  return result


def _benchmark_figure(plt, groups, metric: str, ylabel: str, colors, markers):
  """`<bench>_<metric>` against compute per family: each run's in-training curve (thin line) and
  its final value (marker, lines joining a family's runs); None when no run has the metric."""
  fig, ax, drawn = None, None, False
  for i, (label, members) in enumerate(groups.items()):
    for j, bench in enumerate(registry.BENCHES):
      key = f"{bench}_{metric}"
      color, style = colors[i % len(colors)], "-" if j == 0 else ":"
      finals = sorted((r["flops"], r[key]) for r in members
                      if r.get(key) is not None and r.get("flops"))
      curves = [metric_curve(r, key) for r in members]
      if not finals and not any(curves):
        continue
      if fig is None:
        fig, ax = plt.subplots(figsize=(7, 5))
      for points in curves:
        if points:
          ax.plot([c for _, c, _ in points], [v for _, _, v in points], color=color, ls=style,
                  alpha=0.35, lw=1)
      if finals and metric == "pass@1":  # binomial standard error over the n problems scored
        ns = {r["flops"]: problems_scored(r, bench) for r in members
              if r.get(key) is not None and r.get("flops")}
        errors = [math.sqrt(p * (1 - p) / ns[c]) if ns.get(c) else 0.0 for c, p in finals]
        n_text = ", ".join(sorted({str(n) for n in ns.values() if n})) or "?"
        ax.errorbar(*zip(*finals), yerr=errors, marker=markers[j], ls=style, color=color,
                    capsize=3, label=f"{label} {bench} (n={n_text})")
      elif finals:
        ax.plot(*zip(*finals), marker=markers[j], ls=style, color=color, label=f"{label} {bench}")
      drawn = True
  if not drawn:
    return None
  ax.set_xscale("log")
  readable_log_axis(ax.xaxis)
  if metric == "pass@1":
    ax.set_ylim(0, 1)
  ax.set_xlabel("training compute C (FLOPs)")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return fig


def problems_scored(row: dict, bench: str) -> int | None:
  """How many problems the run's pass@1 averages over (its eval protocol's dataset size)."""
  try:
    dataset = json.loads(row.get(f"{bench}_protocol") or "{}").get("dataset", {})
    return int(dataset["num_tasks"]) if isinstance(dataset, dict) else None
  except (ValueError, KeyError, TypeError):
    return None


def _save(fig, stem: pathlib.Path) -> list[pathlib.Path]:
  fig.tight_layout()
  paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
  for path in paths:
    fig.savefig(path, dpi=130)
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.plot", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("registries", nargs="+", help="registry .csv/.parquet files or sweep roots")
  p.add_argument("--out", required=True, help="directory for the PNG/SVG plots and fits.json")
  p.add_argument("--loss", default="eval", choices=("eval", "train"))
  p.add_argument("--offset", action="store_true", help="fit an irreducible loss c as well")
  p.add_argument("--fit-on", default="frontier", choices=("frontier", "final"))
  args = p.parse_args(argv)
  try:
    result = plot(args.registries, args.out, loss=args.loss, offset=args.offset,
                  fit_on=args.fit_on)
  except (FileNotFoundError, ValueError) as e:
    print(f"plot: {e}", file=sys.stderr)
    return 2
  for label, fit in result["fits"].items():
    print(f"{label}: {fit['formula']}  ({fit['n_points']} points, {fit['fit_on']})")
  print("wrote " + ", ".join(result["files"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
