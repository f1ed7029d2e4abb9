"""Experiment configs: `ml_collections.ConfigDict`s from `experiments/NAME.py:get_config(arg)`.

`base_config()` lists every key the trainer reads, with the paper's defaults (§2.3); an experiment
file starts from it and changes what it needs. On the command line,
  phi1 train --config experiments/NAME.py[:ARG] --config.key.sub=value ...
ARG goes to `get_config(arg)` (e.g. "cpu" for the CPU-size switch, as big_vision's `runlocal`).

The schema is strict: `base_config()` is returned locked, and an experiment file or an override
can only set keys it defines (a new key is added there, with its doc). A typo is one line naming
the key and the closest known one; a value of the wrong type is one line naming the key and the
type it needs. A mapping that is empty in the base config (`sharding_rules`) is free-form.
"""

import ast
import dataclasses
import difflib
import importlib.util
import pathlib
import re
import sys
import traceback

import ml_collections

from phi1.model import Phi1Config


def model_config(config: Phi1Config) -> ml_collections.ConfigDict:
  """The `model` section of an experiment config. The compute dtype is not in it: `precision` is
  its one source of truth (see `phi1_config`), so config.json records what ran."""
  fields = dataclasses.asdict(config)
  del fields["dtype"]
  return ml_collections.ConfigDict(fields)


def base_config() -> ml_collections.ConfigDict:
  from phi1 import data  # the data pipeline owns its own keys
  c = ml_collections.ConfigDict()
  c.model = model_config(Phi1Config.phi1())
  c.steps = 36_000  # how far this run goes
  c.batch_size = 1024  # global batch, in sequences (paper: 1024 x 2048 tokens)
  c.seq_len = 2048
  c.grad_accum = 1  # micro-batches per optimizer step, accumulated inside the jitted step
  c.seed = 0
  c.precision = "fp16"  # the paper's; "bf16" | "fp32"
  c.mesh = "fsdp"  # "dp" | "fsdp" | "fsdp_tp", sized from the visible devices
  c.tensor_parallel = 2  # size of the `tensor` axis under fsdp_tp

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.peak_lr = 1e-3
  c.optimizer.warmup_steps = 750
  # The schedule's own length; 0 = the run's `steps`. A recipe that stops early on a longer
  # schedule sets it (phi-1-base is the step-24,000 checkpoint of a 36,000-step schedule).
  c.optimizer.schedule_steps = 0
  c.optimizer.end_lr = 0.0  # linear decay to this (the paper gives no final LR)
  c.optimizer.weight_decay = 0.1
  # Adam betas/eps: the paper gives none; phi-1.5 (same team and architecture, arXiv 2309.05463
  # §2.3) trains with beta (0.9, 0.98) and eps 1e-7 (docs/fidelity.md).
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-7
  c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables (not stated in the paper)

  c.loss_scale = ml_collections.ConfigDict()
  c.loss_scale.init = 2.0**15
  c.loss_scale.period = 1000

  c.log_every = 50
  c.eval_every = 1000
  c.eval_batches = 16
  c.checkpoint_every = 1000
  c.checkpoint_every_minutes = 0.0  # also save when this much time passed since the last (0: off)
  c.keep_last = 3  # keep the newest N checkpoints ...
  c.keep_every = 1000  # ... plus every K-th step forever (the paper keeps every 1000 finetune steps)
  c.init_from = ""  # params-only export or HF directory to start from (finetuning)
  c.wandb_project = ""  # set to log to Weights & Biases as well
  c.model_fn = ""  # "package.module:name" building the model (phi1/model_fn.py); "" is Phi1
  c.sharding_rules = {}  # logical axis -> mesh axis (or list, or None) over the mesh preset's rules
  c.profile_steps = ()  # (start, stop): a jax.profiler trace of those steps in WORKDIR/profile

  # Benchmark evals during training, train.run's first hook (phi1/evals/during_training.py
  # documents each key); <bench> is any benchmark of the registry (phi1/evals/benchmarks.py).
  c.evals = ml_collections.ConfigDict()
  c.evals.solution_loss = ()  # e.g. ("humaneval", "mbpp"): reference-solution NLL at eval steps
  c.evals.solution_loss_split = ""  # decontamination report.json: similar / non-similar split too
  c.evals.limit = 0  # first N problems (0: all)
  c.evals.samples = 1  # greedy pass@1 by default
  c.evals.temperature = 0.0
  c.evals.max_new_tokens = 128
  c.evals.batch_size = 16
  c.evals.every = ml_collections.ConfigDict()  # <bench>: pass@k every N steps and at the last
  c.evals.path = ml_collections.ConfigDict()  # <bench>: its data file ("": the shipped one)
  from phi1.evals import benchmarks
  for name in benchmarks.names(in_training=True):
    c.evals.every[name] = 0
    c.evals.path[name] = ""

  c.data = data.default_config()
  c.lock()  # experiment files change keys; a new one is added here, with its doc
  return c


class UnknownKey(KeyError):
  """A config key the base config does not define (a typo, or a key to add in base_config)."""

  def __str__(self):
    return self.args[0]


def _flat_keys(node, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys |= _flat_keys(value, f"{prefix}{key}.") if len(value) else {f"{prefix}{key}"}
    else:
      keys.add(f"{prefix}{key}")
  return keys


def _unknown(dotted: str, known: set[str], where: str = "") -> UnknownKey:
  hint = difflib.get_close_matches(dotted, sorted(known), n=1, cutoff=0.6)
  if not hint:  # a typo in the last part only: compare that part alone
    parent, _, last = dotted.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(last, sorted(siblings), n=1)
    hint = [siblings[close[0]]] if close else []
  return UnknownKey(f"{where}unknown config key '{dotted}'"
                    + (f"; did you mean '{hint[0]}'?" if hint else "")
                    + " (new keys are added in phi1/config.py's base_config, with their doc)")


def check_schema(config: ml_collections.ConfigDict, where: str = ""):
  """Refuse keys the base config does not define (UnknownKey, naming the closest known one)."""
  known = _flat_keys(base_config())
  free = {k for k in known if isinstance(_lookup(base_config(), k), ml_collections.ConfigDict)}
  for key in sorted(_flat_keys(config)):
    if key not in known and not any(key.startswith(f + ".") for f in free):
      raise _unknown(key, known, where)


def _lookup(node, dotted: str):
  for key in dotted.split("."):
    node = node[key]
  return node


def validate(config: ml_collections.ConfigDict):
  """What can be checked before anything loads: the schema, and optional packages the config
  asks for."""
  check_schema(config)
  if config.get("wandb_project"):
    if importlib.util.find_spec("wandb") is None:
      raise ValueError(f"wandb_project={config.wandb_project!r} needs the wandb package: pip "
                       "install wandb, or set --config.wandb_project=''")


def load(spec: str) -> ml_collections.ConfigDict:
  """Load `path/to/exp.py[:arg]` and call its get_config()."""
  module, arg = load_module(spec)
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except (AttributeError, KeyError) as e:  # a key a locked config does not have
    match = re.search(r'Key "([^"]+)" does not exist and cannot be added', str(e))
    if not match:
      raise
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if pathlib.Path(f.filename).name != "config_dict.py"]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else f"{spec}: "
    suggestion = re.search(r'Did you mean "([^"]+)"', str(e))
    known = _flat_keys(base_config())
    full = [k for k in known if suggestion and k.rpartition(".")[2] == suggestion.group(1)]
    raise UnknownKey(f"{where}unknown config key '{match.group(1)}'"
                     + (f"; did you mean '{full[0] if len(full) == 1 else suggestion.group(1)}'?"
                        if suggestion else "")
                     + " (new keys are added in phi1/config.py's base_config, with their doc)"
                     ) from None
  check_schema(config, where=f"{spec}: ")
  config.lock()  # a subtree the file replaced is locked too
  return config


def load_module(spec: str):
  """(the experiment module of `path/to/NAME.py[:ARG]`, ARG)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {path} not found (expected experiments/NAME.py)")
  _make_experiment_helpers_importable(file)
  module_spec = importlib.util.spec_from_file_location(f"phi1_experiment_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} must define get_config()")
  return module, arg


def _make_experiment_helpers_importable(file: pathlib.Path):
  """An experiment file anywhere imports the project's helpers as `experiments.recipes` (the
  installed package; from a plain checkout, the folder beside `phi1`) and modules beside itself,
  whatever the working directory."""
  if importlib.util.find_spec("experiments") is None:
    project = pathlib.Path(__file__).resolve().parents[1]
    if (project / "experiments" / "__init__.py").is_file():
      sys.path.append(str(project))
  folder = str(file.resolve().parent)
  if folder not in sys.path:
    sys.path.append(folder)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]):
  """Set dotted keys (`model.n_layers` -> 4). Values are Python literals or bare strings, parsed
  to the type of the key's current value; an unknown key or a value of another type is one
  error line (UnknownKey / ValueError) naming the key."""
  for dotted, raw in overrides.items():
    node, keys = config, dotted.split(".")
    for depth, key in enumerate(keys):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        raise _unknown(dotted, _flat_keys(config))
      if depth < len(keys) - 1:
        node = node[key]
    current = node[keys[-1]]
    try:
      node[keys[-1]] = _parse(raw, current)
    except TypeError as e:
      kind = type(current).__name__
      raise ValueError(f"--config.{dotted}={raw}: {dotted} must be of type {kind} (its value "
                       f"now: {current!r})") from e
  return config


def _parse(raw: str, current):
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, str) and not isinstance(value, str):
    value = raw
  return value


def phi1_config(config: ml_collections.ConfigDict) -> Phi1Config:
  """The model config, with the compute dtype taken from the precision policy."""
  from phi1 import precision
  fields = dict(config.model)
  if "dtype" in fields:
    raise ValueError(f"model.dtype={fields['dtype']!r} is not a config key: the compute dtype "
                     f"comes from precision (fp32 | bf16 | fp16); set precision instead")
  return Phi1Config(**fields, dtype=precision.compute_dtype(config.precision))
