"""The `:cpu` argument of experiment files: `experiments/NAME.py:cpu` runs a CPU-sized version.

One parser for every file, so a typo (`:cpuu`, `:CPU`) is an error rather than silently the full
GPU-sized run."""


def is_cpu(arg: str, experiment: str) -> bool:
  if arg not in ("", "cpu"):
    raise ValueError(f"{experiment} takes '' (the paper-sized run) or 'cpu' (minutes on a CPU), "
                     f"got {arg!r}")
  return arg == "cpu"
