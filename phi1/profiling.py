"""`profile_steps = (start, stop)`: a `jax.profiler` trace of training steps start..stop-1.

The trace goes to WORKDIR/profile as TensorBoard's profile plugin reads it
(`tensorboard --logdir WORKDIR/profile`) plus a Perfetto trace (`*.trace.json.gz`, open it at
ui.perfetto.dev). Steps are counted as `state.step`, so a window behind the resumed step is skipped.
"""

import pathlib

import jax


def parse_window(value) -> tuple[int, int] | None:
  """(start, stop) from the config value: () or None for off, or two step numbers start < stop."""
  if value is None or len(value) == 0:
    return None
  if len(value) != 2 or not all(isinstance(v, int) for v in value) or not 0 <= value[0] < value[1]:
    raise ValueError(f"profile_steps must be (start, stop) with 0 <= start < stop, e.g. (10, 15); "
                     f"got {value!r}")
  return int(value[0]), int(value[1])


class StepProfiler:
  """Call `before(step)` before dispatching step `step` and `after(step, outputs)` after it."""

  def __init__(self, window, workdir):
    self.window = parse_window(window)
    self.logdir = pathlib.Path(workdir) / "profile"
    self.active = False

  def before(self, step: int):
    if self.window and step == self.window[0]:
      self.logdir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.logdir), create_perfetto_trace=True)
      self.active = True

  def after(self, step: int, outputs):
    if self.active and step + 1 == self.window[1]:
      jax.block_until_ready(outputs)  # the window's device work belongs in the trace
      self.close()

  def close(self):
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
