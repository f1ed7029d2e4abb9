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
