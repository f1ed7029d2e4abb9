"""Keyed pseudo-random bijections of range(n), computed one index at a time.

Synthetic generation maps slot i to its constraints with such a bijection instead of independent
draws, so distinct slots get distinct constraint cells until the space is used up (independent
draws of 880K exercises from 2,555 names repeat each ~340 times; a bijection of a space larger than
the run repeats none), and slot i's constraints stay computable on their own, which resume and
`--shard I/W` need.

    perm = Permutation(1_000_000, key="exercises:0:round0")
    perm(5)   # in range(1_000_000); distinct for distinct arguments

A 4-round Feistel network on the smallest even power of two >= n, with cycle walking (Black &
Rogaway 2002, "Ciphers with arbitrary finite domains") to stay inside range(n).
"""

import bisect
import hashlib

_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
  """splitmix64's finaliser: a fast, well-avalanching 64-bit mix."""
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
  return x ^ (x >> 31)


def slot_seed(seed: int, slot: int, salt: str) -> int:
  """A 31-bit request seed, stable across Python versions and processes."""
  digest = hashlib.sha256(f"{salt}:{seed}:{slot}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Permutation:

  def __init__(self, n: int, key: str):
    if n < 1:
      raise ValueError(f"a permutation needs n >= 1, got {n}")
    self.n = n
    bits = max(2, (n - 1).bit_length())
    self._half = (bits + 1) // 2
    self._mask = (1 << self._half) - 1
    digest = hashlib.sha256(key.encode()).digest()
    self._keys = [int.from_bytes(digest[8 * r:8 * r + 8], "little") for r in range(4)]

  def __call__(self, i: int) -> int:
    if not 0 <= i < self.n:
      raise IndexError(f"{i} is outside range({self.n})")
    half, mask, x = self._half, self._mask, i
    while True:
      left, right = x >> half, x & mask
      for k in self._keys:
        left, right = right, left ^ (_mix(right ^ k) & mask)
      x = (left << half) | right
      if x < self.n:
        return x


class StratifiedAllocation:
  """Slot -> (round, stratum, index in stratum) for strata of different sizes and integer weights.

  Each round of `per_round` slots is a bijection onto a set of (stratum, index) pairs in which
  stratum t holds exactly weight_t / sum(weights) of the slots, so within a round no pair repeats;
  slot `per_round * k + j` is round k, whose pairs are drawn with fresh keys. `per_round` is
  S * sum(weights) with S = min_t size_t // weight_t, the most that keeps every stratum's share.
  """

  def __init__(self, weights: list[int], sizes: list[int], key: str):
    if len(weights) != len(sizes) or not weights:
      raise ValueError("one weight per stratum, at least one stratum")
    if any(not isinstance(w, int) or w < 1 for w in weights):
      raise ValueError(f"stratum weights must be positive integers, got {weights}")
    block = min(size // w for w, size in zip(weights, sizes))
    if block < 1:
      small = [i for i, (w, s) in enumerate(zip(weights, sizes)) if s < w]
      raise ValueError(f"strata {small} have fewer cells than their weight")
    self.weights, self.sizes, self.key, self.block = list(weights), list(sizes), key, block
    self.starts = [0]
    for w in weights:
      self.starts.append(self.starts[-1] + w * block)
    self.per_round = self.starts[-1]
    self._perms: dict[tuple, Permutation] = {}

  def _perm(self, n: int, *name) -> Permutation:
    perm = self._perms.get(name)
    if perm is None:
      perm = self._perms[name] = Permutation(n, ":".join(map(str, (self.key, *name))))
    return perm

  def __call__(self, slot: int) -> tuple[int, int, int]:
    round_, j = divmod(slot, self.per_round)
    p = self._perm(self.per_round, "round", round_)(j)
    stratum = bisect.bisect_right(self.starts, p) - 1
    offset = p - self.starts[stratum]
    return round_, stratum, self._perm(self.sizes[stratum], "stratum", stratum, round_)(offset)
