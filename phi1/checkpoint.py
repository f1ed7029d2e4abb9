"""Checkpoints: the whole training state with orbax, and params-only exports for inference.

A training checkpoint (workdir/checkpoints/<step>/) holds parameters, optimizer state, step, base
RNG key and loss scale ("state", sharded arrays written by every host) and the grain iterator
position of each process ("data"), so a rerun continues bit-for-bit where it stopped. Orbax writes
each step into a temporary directory and renames it only when complete, so a kill mid-save never
leaves a half-written checkpoint that a resume could pick up.

An export (`export_params`) is what notebooks, `phi1 eval` and finetuning start from: float32
parameters, the model config and the tokenizer file, in one directory. `load_for_inference(workdir,
step=N)` reads any kept training checkpoint instead (evaluating a run's intermediate steps).
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from phi1.model import Phi1, Phi1Config
from phi1.run_identity import kept_steps

EXPORT_CONFIG = "phi1_config.json"
EXPORT_PARAMS = "params"


class _IteratorSnapshot:
  """The data iterator's position frozen at save time (async saves finish after training moves on)."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state(), indent=2).encode()

  def get_state(self) -> bytes:
    return self._state


def manager(workdir, *, keep_last: int, keep_every: int | None, async_save: bool = True):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep_last, keep_period=keep_every or None, create=True,
      enable_async_checkpointing=async_save)
  import grain  # registers grain's orbax handler for iterator state
  del grain
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options,
                               item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, *, force=False) -> bool:
  import grain
  args = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator))
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator, step=None):
  """Restore onto `abstract_state`'s shapes and shardings; set the data iterator in place."""
  import grain
  step = mngr.latest_step() if step is None else step
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except (FileNotFoundError, ValueError) as e:
    raise RuntimeError(f"checkpoint at step {step} in {mngr.directory} is unreadable ({e}); move "
                       "that step's directory aside to resume from an earlier one") from e
  return restored["state"]


def export_params(model: Phi1, out_dir, tokenizer_path=None, model_fn: str = ""):
  """Params-only, float32, plus config and tokenizer: what `load_for_inference` reads.

  `model_fn` (an import path, phi1/model_fn.py) is saved beside the config when the run used one.

  Every process calls this (orbax writes each host's shards); process 0 writes the rest.
  """
  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / EXPORT_PARAMS, params, force=True)
  if jax.process_index() != 0:
    return out
  config = dict(model.config.__dict__)
  config["dtype"] = "float32"
  if model_fn:
    config["model_fn"] = model_fn
  (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))
  if tokenizer_path is not None:
    tokenizer_path = pathlib.Path(tokenizer_path)
    shutil.copy(tokenizer_path, out / ("tokenizer" + "".join(tokenizer_path.suffixes)))
  return out


def is_export(path) -> bool:
  return (pathlib.Path(path) / EXPORT_CONFIG).is_file()


def _resolve(path) -> pathlib.Path:
  """A training workdir stands for the export its run wrote (workdir/export)."""
  path = pathlib.Path(path).absolute()
  return path / "export" if not is_export(path) and (path / "export").is_dir() else path


def load_model(path, **config_overrides) -> Phi1:
  """A Phi1 from an export directory, an HF directory, or a finished training workdir."""
  path = _resolve(path)
  if (path / "config.json").is_file() and not is_export(path):
    from phi1 import hf
    return hf.from_hf(path)
  if not is_export(path):
    steps = kept_steps(path.parent if path.name == "export" else path)
    hint = f"; its kept training checkpoints are steps {steps}: add --step N" if steps else ""
    raise FileNotFoundError(
        f"{path} is neither a params export (with {EXPORT_CONFIG}) nor an HF directory "
        f"(with config.json); `phi1 train` writes an export to WORKDIR/export when it finishes{hint}")
  from phi1 import model_fn as model_fn_lib
  fields = json.loads((path / EXPORT_CONFIG).read_text())
  build = model_fn_lib.resolve(fields.pop("model_fn", ""))
  config = Phi1Config(**{**fields, **config_overrides})
  abstract = nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))
  abstract_params = nnx.state(abstract, nnx.Param)
  # Onto one local device, whatever mesh wrote it (a multi-host run reads back on a laptop).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        nnx.to_pure_dict(abstract_params))
  mismatch = _shape_mismatch(path / EXPORT_PARAMS, target)
  if mismatch:
    raise ValueError(f"the parameters in {path / EXPORT_PARAMS} do not fit the architecture in "
                     f"{path / EXPORT_CONFIG} ({mismatch}): the config and the weights come from "
                     "different models")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(path / EXPORT_PARAMS, target)
  except Exception as e:  # orbax raises several types for missing/corrupt files
    raise RuntimeError(f"could not read parameters from {path / EXPORT_PARAMS}: {e}. Re-export "
                       "the checkpoint; a partial copy is the usual cause") from e
  model = build(config, rngs=nnx.Rngs(0))
  nnx.replace_by_pure_dict(abstract_params, params)
  nnx.update(model, abstract_params)
  return model


def load_training_step(workdir, step: int) -> tuple[Phi1, str]:
  """(float32 model, tokenizer path) from training checkpoint `step` of a `phi1 train` workdir.

  The model is the run's own (`config.model_fn` in its config.json); only the parameters are read
  from the checkpoint (the optimizer state and data position stay on disk)."""
  import ml_collections

  from phi1 import config as config_lib
  from phi1 import model_fn as model_fn_lib
  workdir = pathlib.Path(workdir).absolute()
  steps = kept_steps(workdir)
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {workdir / 'checkpoints'}; kept "
                            f"steps: {steps or 'none (is this a phi1 train workdir?)'}")
  if not (workdir / "config.json").is_file():
    raise FileNotFoundError(f"{workdir / 'config.json'} not found: the run's config is needed "
                            "to rebuild its model")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  model_config = dataclasses.replace(config_lib.phi1_config(config), dtype="float32")
  build = model_fn_lib.resolve(config.get("model_fn", ""))
  abstract_params = nnx.state(nnx.eval_shape(lambda: build(model_config, rngs=nnx.Rngs(0))),
                              nnx.Param)
  # Onto one local device whatever mesh trained it: orbax reshards onto the target on restore.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract_params)
  mngr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    item = {"params": target}
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  except (FileNotFoundError, ValueError) as e:
    raise RuntimeError(f"checkpoint at step {step} in {workdir / 'checkpoints'} is unreadable "
                       f"({e}); the run's config.json may not match its checkpoints") from e
  finally:
    mngr.close()
  model = build(model_config, rngs=nnx.Rngs(0))
  nnx.update(model, restored["state"]["params"])
  return model, config.data.tokenizer


def _shape_mismatch(params_dir: pathlib.Path, target) -> str:
  """'' when the saved arrays have the target's names and shapes, else the first differences."""
  try:
    with ocp.StandardCheckpointer() as ckptr:
      saved = ckptr.metadata(params_dir).item_metadata.tree
  except Exception:  # noqa: BLE001 - unreadable metadata: the restore below reports it
    return ""
  def shapes(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    # Saved metadata names list indices as strings ('0'): compare names as text.
    return {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k): tuple(v.shape)
            for k, v in flat}
  have, want = shapes(saved), shapes(target)
  problems = [f"{k}: saved {have[k]}, config needs {want[k]}" for k in want
              if k in have and have[k] != want[k]]
  problems += [f"{k} missing" for k in want if k not in have]
  problems += [f"{k} not in the model" for k in have if k not in want]
  return "; ".join(problems[:3]) + (f"; {len(problems) - 3} more" if len(problems) > 3 else "")


def load_for_inference(path, step: int | None = None):
  """(model, tokenizer) from an export or HF directory; the tokenizer is the one saved beside it.

  With `step`, `path` is a training workdir and the model is its checkpoint at that step."""
  from phi1 import tokenizer as tokenizer_lib
  if step is not None:
    model, tokenizer_path = load_training_step(path, step)
    if not tokenizer_path or not pathlib.Path(tokenizer_path).exists():
      raise FileNotFoundError(f"the run's tokenizer {tokenizer_path!r} (data.tokenizer in "
                              f"{path}/config.json) is not there")
    return model, tokenizer_lib.load_tokenizer(tokenizer_path)
  path = _resolve(path)
  model = load_model(path)
  candidates = sorted(path.glob("tokenizer*"))
  if not candidates:
    raise FileNotFoundError(f"no tokenizer file (tokenizer.model / tokenizer.json) in {path}")
  return model, tokenizer_lib.load_tokenizer(candidates[0] if is_export(path) else path)
