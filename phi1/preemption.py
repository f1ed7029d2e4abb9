"""Stopping a training run cleanly: on SIGTERM (a SLURM preemption) or SIGINT (Ctrl-C) the current
step finishes, a checkpoint (with the data iterator's position) is saved and the run ends with
`Stopped`, which the command line turns into exit 0 (SIGTERM: SLURM requeues the job) or 130
(SIGINT, the shell's convention). A second Ctrl-C stops at once. Under Slurm the checkpoint must fit
in KillWait (SIGTERM -> SIGKILL, 30 s by default); the sweep's sbatch scripts forward the signal to
the trainer and requeue the job when the time limit is near (experiments/slurm.py).

One process: Python signal handlers set a flag the loop reads once per step. Several processes
(multi-host): JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`, fed by
the coordination service, which catches SIGTERM itself) makes every host stop at the same step,
so they all join the same checkpoint save.

Time-based checkpoints (`checkpoint_every_minutes`) come from the same per-step decision; with
several processes, process 0's clock decides for all.
"""

import signal
import sys
import threading
import time

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Stopped(Exception):
  """Training stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    self.exit_code = EXIT_CODES.get(signum, 0)
    super().__init__(f"stopped at step {step}; rerun the same command to resume")


class StopSignals:
  """`install()` before the loop, `uninstall()` after; `save_due(step)` once per step."""

  def __init__(self, every_minutes: float = 0.0):
    self.signum: int | None = None
    self.every_s = float(every_minutes or 0) * 60
    self._last_save = time.monotonic()
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def install(self):
    import jax
    self._multi = jax.process_count() > 1
    if self._multi or threading.current_thread() is not threading.main_thread():
      return  # JAX's coordination service handles SIGTERM; handlers need the main thread
    for signum in EXIT_CODES:
      self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
    self.signum = signum
    print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
          "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

  def save_due(self, step: int) -> bool:
    """True when this step must be checkpointed: a stop was requested, or the time has come."""
    if self._multi:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = signal.SIGTERM
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        pass
    timed = bool(self.every_s) and time.monotonic() - self._last_save >= self.every_s
    if self._multi and self.every_s:
      import numpy as np
      from jax.experimental import multihost_utils
      timed = bool(multihost_utils.broadcast_one_to_all(np.asarray(timed)))
    return self.requested or timed

  def saved(self):
    self._last_save = time.monotonic()
