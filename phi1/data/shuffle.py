"""Shuffling: documents in a fresh order every epoch, rows within a window.

Both use numpy permutations: grain's `index_shuffle` (behind MapDataset.shuffle and
WindowShuffleIterDataset) costs ~0.25 ms per element on this 2-core machine, which made it the
single largest cost of the whole pipeline.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import grain
import numpy as np


class EpochShuffle:
  """Endless random-access view of `source`, in a fresh permutation each epoch.

  Epoch e reads `source[perm_e[j]]`, perm_e = a permutation seeded by (seed, e): deterministic,
  and it only depends on the read index, so grain's index-based iterator state restores it exactly.
  (grain's own MapDataset.shuffle costs ~1 ms per element on this machine; one numpy permutation
  per epoch is free by comparison.)
  """

  def __init__(self, source, seed: int):
    self.source, self.seed = source, seed
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
      # Keep the neighbouring epoch: reader threads may straddle an epoch boundary.
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = perm
    return perm

  def __getitem__(self, index: int):
    epoch, j = divmod(index, len(self.source))
    return self.source[int(self._perm(epoch)[j])]


class WindowShuffleIterDataset(grain.IterDataset):
  """Reads `window_size` rows, emits them in a seeded random order, repeats.

  Packing emits consecutive slices of a long document back to back; without this a batch can be
  eight neighbouring pieces of one file. State: parent state at the window start, window index and
  rows already emitted; restoring re-reads that window (no row data in the checkpoint).
  """

  def __init__(self, parent: grain.IterDataset, *, window_size: int, seed: int):
    super().__init__(parent)
    if window_size < 1:
      raise ValueError(f"window_size must be >= 1, got {window_size}")
    self.window_size, self.seed = window_size, seed

  def __iter__(self) -> grain.DatasetIterator:
    return _WindowShuffleIterator(self._parent.__iter__(), self.window_size, self.seed)

  def __str__(self) -> str:
    return f"WindowShuffleIterDataset(window_size={self.window_size})"


class _WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size, self._seed = window_size, seed
    self._window: list = []
    self._order = np.zeros(0, np.int64)
    self._window_index, self._emitted = -1, 0
    self._window_start_state = copy.deepcopy(parent.get_state())

  def _fill(self, window_index: int) -> None:
    self._window_start_state = copy.deepcopy(self._parent.get_state())
    self._window = []
    for _ in range(self._window_size):
      try:
        self._window.append(next(self._parent))
      except StopIteration:
        break
    rng = np.random.default_rng([self._seed, window_index])
    self._order = rng.permutation(len(self._window))
    self._window_index, self._emitted = window_index, 0

  def __next__(self):
    if self._emitted == len(self._window):
      if self._window_index >= 0 and len(self._window) < self._window_size:
        raise StopIteration  # the parent ran out inside the last window
      self._fill(self._window_index + 1)
      if not self._window:
        raise StopIteration
    row = self._window[self._order[self._emitted]]
    self._emitted += 1
    return row

  def get_state(self) -> dict[str, Any]:
    return {"parent": copy.deepcopy(self._window_start_state),
            "window_index": self._window_index, "emitted": self._emitted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._window_start_state = copy.deepcopy(state["parent"])
    if state["window_index"] < 0:
      self._window, self._window_index, self._emitted = [], -1, 0
      return
    self._fill(int(state["window_index"]))
    self._emitted = int(state["emitted"])
