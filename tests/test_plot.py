"""experiments/plot.py: the power-law fit recovers known parameters; plots from registries."""

import json

import numpy as np
import pytest

from experiments import plot, registry

C = np.geomspace(1e15, 1e21, 14)


def test_fit_recovers_exact_power_law():
  fit = plot.fit_power_law(C, 3e3 * C ** -0.15)
  assert fit.b == pytest.approx(0.15, rel=1e-6)
  assert fit.coefficient == pytest.approx(3e3, rel=1e-5)
  assert fit(C) == pytest.approx(3e3 * C ** -0.15, rel=1e-6)


def test_fit_with_offset_recovers_parameters_within_their_uncertainty():
  rng = np.random.default_rng(0)
  a, b, c = 40.0, 0.09, 1.8
  loss = (a * C ** -b + c) * np.exp(rng.normal(0, 0.002, C.size))  # 0.2% noise
  fit = plot.fit_power_law(C, loss, offset=True)
  assert fit.offset and fit.n_points == C.size
  for got, err, true in ((fit.b, fit.b_err, b), (fit.c, fit.c_err, c),
                         (fit.coefficient, fit.a_err * fit.c_ref ** fit.b, a)):
    assert 0 < err < 0.2 * abs(true)
    assert abs(got - true) < 4 * err + 0.05 * abs(true)
  assert fit(C) == pytest.approx(a * C ** -b + c, rel=0.01)


def test_fit_needs_more_points_than_parameters():
  with pytest.raises(ValueError, match="more than 3"):
    plot.fit_power_law(C[:3], C[:3] ** -0.1, offset=True)


def test_frontier_keeps_the_lowest_loss_at_each_compute():
  points = [(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.0), (4, 3.5), (5, 3.2)]
  assert plot.frontier(points) == [(1, 5.0), (2, 4.0), (4, 3.0)]


def test_plot_two_sweeps_on_one_figure_with_fits_and_pass_at_1(tmp_path):
  """Two synthetic sweeps with known exponents; each family's fit finds its own."""
  exponents = {"wide": 0.10, "deep": 0.20}
  for sweep_name, b in exponents.items():
    rows = []
    for i, compute in enumerate(np.geomspace(1e12, 1e16, 6)):
      rows.append({"name": f"r{i}", "family": sweep_name, "status": "done",
                   "flops": float(compute), "tokens": int(compute / 1e6), "steps": 10,
                   "final_eval_loss": float(20 * compute ** -b),
                   "humaneval_pass@1": float(i) / 10})
    registry.write(rows, tmp_path / sweep_name / "registry.csv")
  result = plot.plot([tmp_path / name / "registry.csv" for name in exponents], tmp_path / "out",
                     fit_on="final")
  for name, b in exponents.items():
    assert result["fits"][name]["b"] == pytest.approx(b, rel=1e-4)
  for stem in ("loss_vs_compute", "loss_vs_tokens", "pass_at_1_vs_compute"):
    for ext in ("png", "svg"):
      assert (tmp_path / "out" / f"{stem}.{ext}").stat().st_size > 1000
  saved = json.loads((tmp_path / "out" / "fits.json").read_text())
  assert saved["deep"]["n_points"] == 6 and "formula" in saved["deep"]


def _sweep_with_curves(tmp_path, decaying=True):
  """Two families (named so that plain sorting would misorder them), three runs each, with
  logged evals every 2 steps and a config whose LR decays to 0 (or stays flat)."""
  rows = []
  for family, scale in (("d128", 1.0), ("d64", 2.0)):
    for i, flops_per_token in enumerate((1e9, 4e9, 1.6e10)):
      name = f"{family}_r{i}"
      workdir = tmp_path / "runs" / name
      workdir.mkdir(parents=True)
      tokens_per_step = 1000
      (workdir / "config.json").write_text(json.dumps({
          "steps": 10, "optimizer": {"peak_lr": 1e-3, "end_lr": 0.0 if decaying else 1e-3,
                                     "warmup_steps": 1}}))
      evals = [{"step": s, "eval_loss": scale * 30 * (s * tokens_per_step * flops_per_token) ** -0.1}
               for s in (2, 4, 6, 8, 10)]
      (workdir / "metrics.jsonl").write_text("\n".join(map(json.dumps, evals)) + "\n")
      rows.append({"name": name, "family": family, "status": "done", "steps": 10,
                   "tokens": 10 * tokens_per_step, "flops": 10 * tokens_per_step * flops_per_token,
                   "final_eval_loss": evals[-1]["eval_loss"], "workdir": str(workdir),
                   "humaneval_pass@1": 0.25 * (i + 1),
                   "humaneval_protocol": json.dumps({"dataset": {"num_tasks": 164}})})
  registry.write(rows, tmp_path / "sweep" / "registry.csv")
  return tmp_path / "sweep" / "registry.csv"


def test_figure_data_names_runs_rings_fitted_points_and_keeps_fits_over_the_data(tmp_path, capsys):
  result = plot.plot([_sweep_with_curves(tmp_path)], tmp_path / "out", keep_figures=True)
  ax_c = result["figures"]["loss_vs_compute"].axes[0]
  assert list(plot.families(plot.load([tmp_path / "sweep" / "registry.csv"]))) == ["d64", "d128"]
  assert [t.get_text() for t in ax_c.get_legend().get_texts()][0] == "d64"
  names = {t.get_text() for t in ax_c.texts}
  assert names == {f"{f}_r{i}" for f in ("d64", "d128") for i in range(3)}
  for family, fit in result["fits"].items():
    ringed = next(c for c in ax_c.collections if c.get_gid() == f"fit-points:{family}")
    np.testing.assert_allclose(ringed.get_offsets(), fit["points"])
    line = next(l for l in ax_c.lines if l.get_gid() == f"fit:{family}")
    xs = [c for c, _ in fit["points"]]
    assert line.get_xdata().min() == pytest.approx(min(xs))
    assert line.get_xdata().max() == pytest.approx(max(xs))  # not extrapolated past the data
    assert "decays" in fit["warning"]
  assert "warning: d64: the fit uses intermediate evals" in capsys.readouterr().err

  fig = result["figures"]["pass_at_1_vs_compute"]
  ax = fig.axes[0]
  assert ax.get_ylim() == (0.0, 1.0)
  bars = ax.containers[0]
  p = np.array([0.25, 0.5, 0.75])
  heights = [seg[1][1] - seg[0][1] for seg in bars.lines[2][0].get_segments()]
  np.testing.assert_allclose(heights, 2 * np.sqrt(p * (1 - p) / 164))
  assert "(n=164)" in [t.get_text() for t in ax.get_legend().get_texts()][0]

  fig = result["figures"]["loss_vs_compute"]
  fig.canvas.draw()
  lo, hi = ax_c.get_xlim()
  labels = [t.get_text() for t in ax_c.get_xticklabels() if lo <= t.get_position()[0] <= hi]
  assert len([t for t in labels if t]) >= 2 and not any("$" in t for t in labels), labels
  import matplotlib.pyplot as plt
  plt.close("all")


def test_no_warning_for_a_constant_learning_rate(tmp_path):
  result = plot.plot([_sweep_with_curves(tmp_path, decaying=False)], tmp_path / "out")
  assert all("warning" not in fit for fit in result["fits"].values())
