"""Which model the trainer builds: `Phi1`, or a researcher's `model_fn(model_config, rngs=...)`.

A model_fn returns any NNX module with Phi1's interface (`config`, `hidden_states(tokens,
segment_ids=, positions=, rngs=)`, `lm_head`, `train()` / `eval()`); a `Phi1` subclass with a
changed block is the usual case, and the class itself is a valid model_fn. A run records the
function's import path ("package.module:name") in config.json and in its export, so the config hash
tells it apart from a stock run and `load_model` can rebuild it.
"""

import importlib

from phi1.model import Phi1

REQUIRED = ("config", "hidden_states", "lm_head", "train", "eval")


def build_default(model_config, rngs):
  return Phi1(model_config, rngs=rngs)


def import_path(fn) -> str:
  """"module:qualname" of `fn` ("" for the stock Phi1). One defined in the script being run
  (`__main__`) is refused: other processes (multi-host, `phi1 eval`, `phi1 convert`) cannot
  import it by that name."""
  if fn is None or fn is Phi1 or fn is build_default:
    return ""
  if fn.__module__ == "__main__":
    raise ValueError(f"model_fn {fn.__qualname__} is defined in __main__ (the script being run): "
                     "other processes and later loads of the run (phi1 eval, convert) cannot "
                     "import it. Move it into a module on PYTHONPATH (e.g. my_models.py) and "
                     "pass it from there")
  return f"{fn.__module__}:{fn.__qualname__}"


def resolve(path: str):
  """The callable an import path names; "" is the stock Phi1."""
  if not path:
    return build_default
  module_name, _, attr = path.partition(":")
  if module_name == "__main__":
    raise ValueError(f"model_fn {path!r} names the script being run (__main__), which other "
                     "processes cannot import: move it into a module on PYTHONPATH")
  if not attr or "<" in attr:
    raise ValueError(f"model_fn {path!r} is not importable: it must be a module-level function or "
                     "class written as 'package.module:name' (not a lambda or a local function)")
  try:
    target = importlib.import_module(module_name)
    for part in attr.split("."):
      target = getattr(target, part)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"model_fn {path!r} cannot be imported ({e}); is its package on "
                     "PYTHONPATH?") from e
  return target


def check_interface(model, path: str):
  missing = [name for name in REQUIRED if not hasattr(model, name)]
  if missing:
    raise TypeError(f"model_fn {path or 'Phi1'} returned {type(model).__name__}, which lacks "
                    f"{missing}: return a module with Phi1's interface (a Phi1 subclass is simplest)")
