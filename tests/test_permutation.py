"""Keyed bijections and the stratified allocation that give slots distinct constraint cells."""

import collections

import pytest

from data_gen.permutation import Permutation, StratifiedAllocation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_permutation_is_a_bijection_of_range_n(n):
  perm = Permutation(n, key="k")
  assert sorted(perm(i) for i in range(n)) == list(range(n))


def test_permutation_depends_on_its_key_only():
  a, b = Permutation(10_000, "a"), Permutation(10_000, "b")
  assert [a(i) for i in range(50)] == [Permutation(10_000, "a")(i) for i in range(50)]
  assert sum(a(i) == b(i) for i in range(10_000)) < 20  # ~1 expected for independent keys
  with pytest.raises(IndexError):
    a(10_000)


def test_allocation_gives_exact_weighted_shares_without_repeats_within_a_round():
  allocation = StratifiedAllocation([3, 1, 2], [100, 90, 25], key="t")
  assert allocation.block == 12 and allocation.per_round == 72
  first = [allocation(s) for s in range(72)]
  assert len({(t, i) for _, t, i in first}) == 72  # no (stratum, index) repeats in a round
  assert collections.Counter(t for _, t, _ in first) == {0: 36, 1: 12, 2: 24}
  assert all(0 <= i < [100, 90, 25][t] for _, t, i in first)
  second = [allocation(s) for s in range(72, 144)]
  assert {r for r, _, _ in second} == {1} and len({(t, i) for _, t, i in second}) == 72
  assert [(t, i) for _, t, i in second] != [(t, i) for _, t, i in first]


def test_allocation_rejects_a_stratum_smaller_than_its_weight():
  with pytest.raises(ValueError, match="fewer cells than their weight"):
    StratifiedAllocation([5, 1], [3, 10], key="t")
