"""A sweep's runs: an experiment file's declaration expanded into named runs, each a set of config
overrides with its own workdir, and what a workdir says about its run.

An experiment file declares its runs with `get_sweep(arg) -> list[dict]` next to `get_config(arg)`.
Each dict is one run: dotted config keys -> values (`{"model.n_layers": 4, "steps": 100}`), plus
  "name"    the run's name and workdir `<root>/<name>` (default: built from the overrides);
  "family"  which curve the run belongs to in plots (default: the experiment's name);
  "paper"   the paper's figure for this run, {"a100_hours": H, "what": "..."}: `--dry-run` prints
            the MFU those hours imply beside our estimate.
A value may name another run's workdir as "{run:NAME}" (e.g. `"init_from": "{run:base}/export"`):
that run then waits for NAME (locally it comes later in the list; on Slurm an afterok dependency).
`grid()` builds such a list as a cartesian product. A file without get_sweep is one run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import ml_collections

from phi1 import atomic, config as config_lib, run_identity
from phi1.run_identity import config_hash
from experiments.grid import short_label  # run names label values as grid does

DONE = run_identity.DONE  # JSON marker written when a run finished: config hash, wall time, final metrics
RUN_INFO = "run.json"  # name, experiment, overrides, config hash, accumulated wall time
SPECIAL_KEYS = ("name", "family", "paper")
_RUN_REF = re.compile(r"\{run:([A-Za-z0-9._-]+)\}")


@dataclasses.dataclass
class Run:
  name: str
  family: str
  experiment: str  # "experiments/NAME.py[:ARG]" as given
  overrides: dict  # dotted key -> value, "{run:...}" references resolved to paths
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  needs: list  # names of runs whose workdirs this one reads
  paper: dict = dataclasses.field(default_factory=dict)  # the paper's figures for this run

  @property
  def config_hash(self) -> str:
    return config_hash(self.config)


def load_experiment(spec: str):
  """The module of `path/to/NAME.py[:ARG]` and ARG."""
  return config_lib.load_module(spec)


def expand(spec: str, root=None, extra: dict | None = None) -> list[Run]:
  """The runs `spec` declares, each with its config built and checked (unknown keys raise)."""
  module, arg = load_experiment(spec)
  stem = pathlib.Path(spec.partition(":")[0]).stem
  root = pathlib.Path(root or pathlib.Path("runs") / (stem + (f"_{arg}" if arg else ""))).absolute()
  declared = module.get_sweep(arg) if hasattr(module, "get_sweep") else [{"name": stem}]
  if isinstance(declared, dict):
    declared = [declared]
  if not declared:
    raise ValueError(f"{spec}: get_sweep returned no runs")
  names = []
  for i, run in enumerate(declared):
    name = run.get("name") or "_".join(f"{k.split('.')[-1]}-{short_label(v)}"
                                       for k, v in run.items() if k not in SPECIAL_KEYS) or f"run{i}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
      raise ValueError(f"{spec}: run name {name!r} must use only letters, digits, '.', '_', '-'")
    names.append(name)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{spec}: run names must be unique; repeated: {duplicates}")

  runs = []
  for name, declared_run in zip(names, declared):
    overrides, needs = {}, []
    for key, value in declared_run.items():
      if key in SPECIAL_KEYS:
        continue
      if isinstance(value, str):
        for ref in _RUN_REF.findall(value):
          if ref not in names[:names.index(name)]:
            raise ValueError(f"{spec}: run {name} refers to {{run:{ref}}}, which is not a run "
                             f"listed before it (runs: {names})")
          needs.append(ref)
        value = _RUN_REF.sub(lambda m: str(root / m.group(1)), value)
      overrides[key] = value
    config = module.get_config(arg) if arg else module.get_config()
    try:
      config_lib.apply_overrides(config, {k: _as_text(v) for k, v in overrides.items()})
      if extra:
        config_lib.apply_overrides(config, dict(extra))
      config_lib.phi1_config(config)  # a model the overrides make impossible fails here, not later
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f"{spec}: run {name}: {e}") from e
    # --set values arrive as text: record them as the config holds them (10, not "10").
    typed_extra = {k: _lookup(config, k) for k in extra or {}}
    runs.append(Run(name=name, family=str(declared_run.get("family", stem)), experiment=spec,
                    overrides={**overrides, **typed_extra}, config=config,
                    workdir=root / name, needs=sorted(set(needs)),
                    paper=dict(declared_run.get("paper") or {})))
  return runs


def _lookup(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def _as_text(value) -> str:
  """apply_overrides parses text (a literal, or a bare string): repr() keeps lists and numbers."""
  return value if isinstance(value, str) else repr(value)


# ------------------------------------------------------------------------------------------ status
def is_done(run: Run) -> bool:
  """DONE for this very config, or (a run trained with `phi1 train`) the final step's checkpoint;
  either only while the workdir's checkpoints are this config's (phi1/run_identity.py)."""
  return run_identity.is_done(run.workdir, run.config)


def write_json(path: pathlib.Path, obj: dict):
  atomic.write_json(path, obj, indent=2, default=str)


def run_info(run: Run) -> dict:
  path = run.workdir / RUN_INFO
  info = json.loads(path.read_text()) if path.is_file() else {}
  info.update(name=run.name, family=run.family, experiment=run.experiment,
              overrides=run.overrides, config_hash=run.config_hash)
  info.setdefault("wall_s", 0.0)
  return info

