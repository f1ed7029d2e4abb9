"""The unbiased pass@k estimator (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k), per problem."""

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction


def pass_at_k(n: int, c: int, k: int) -> float:
  """Probability that at least one of k samples drawn without replacement from n (c correct) passes.

  Integer binomials, so the float returned is the exact value correctly rounded (the usual
  product form `1 - prod(1 - k / arange(n - c + 1, n + 1))` agrees to a few ulps).
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def pass_at_k_table(passed: Mapping[str, Sequence[bool]],
                    missing: Sequence[str] = ()) -> dict[str, float]:
  """{"pass@k": mean over problems} for every k up to the smallest per-problem sample count.

  `missing` names problems without samples that count as failed: they are in every mean's
  denominator (the score stays over every selected problem).
  """
  if not passed:
    return {"pass@1": 0.0} if missing else {}
  n_min = min(len(v) for v in passed.values())
  if n_min == 0:
    raise ValueError("every problem needs at least one sample")
  table = {}
  for k in range(1, n_min + 1):
    table[f"pass@{k}"] = math.fsum(pass_at_k(len(v), sum(map(bool, v)), k)
                                   for v in passed.values()) / (len(passed) + len(missing))
  return table
