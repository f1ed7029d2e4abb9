"""Train metrics over a log window, fetched from the device one step late.

`metrics.jsonl`'s train loss at step t is the mean loss of every step since the previous log step
(a single step's loss is noisy), and the fetch of step t's numbers waits until step t+1 has been
dispatched, so the host never stalls the device queue at a log step. Throughput is measured between
fetches: the time the device took for the window's steps (compilation excluded by `restart_clock`).
"""

import time

import jax
import numpy as np

MEAN_KEYS = ("loss",)  # averaged over the window
SUM_KEYS = ("skipped", "tokens")  # summed over the window; other keys: the last step's value


class Pending:
  """One closed window: its device values, not yet fetched."""

  def __init__(self, step: int, per_step: list[dict], tokens: int, window: "LogWindow"):
    self.step, self._per_step, self._tokens, self._window = step, per_step, tokens, window

  def fetch(self) -> dict:
    """Plain floats for the window (blocks until its last step is done)."""
    values = jax.device_get([{k: _local(v) for k, v in m.items()} for m in self._per_step])
    now = time.perf_counter()
    elapsed, self._window.clock = now - self._window.clock, now
    out = {k: float(values[-1][k]) for k in values[-1]}
    for key in MEAN_KEYS:
      if key in out:
        out[key] = float(np.mean([v[key] for v in values]))
    for key in SUM_KEYS:
      if key in out:
        out[key] = float(np.sum([v[key] for v in values]))
    out["tokens_per_sec"] = self._tokens / max(elapsed, 1e-9)
    return out


class LogWindow:

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.clock = time.perf_counter()
    self._per_step, self._timed_steps = [], 0

  def add(self, step_metrics: dict, timed: bool = True):
    self._per_step.append(step_metrics)
    self._timed_steps += int(timed)

  def restart_clock(self):
    """After a step that compiled: throughput counts only the steps from here on."""
    self.clock = time.perf_counter()

  def close(self, step: int) -> Pending:
    pending = Pending(step, self._per_step, self._timed_steps * self.tokens_per_step, self)
    self._per_step, self._timed_steps = [], 0
    return pending


def _local(x):
  # A replicated jax.Array's value from this process's own copy (works across hosts).
  return x.addressable_data(0) if isinstance(x, jax.Array) else x
