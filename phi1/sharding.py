"""The one place that knows about devices: mesh, logical-axis rules, and their presets.

The model names logical axes only (`logical_axes` metadata on parameters, `constrain(x, names)` on
activations). A preset maps each logical name to mesh axes of the mesh (`data`, `fsdp`, `tensor`):
  dp       parameters replicated, batch split over every device;
  fsdp     parameters (and so optimizer state) split along `embed` over every device (ZeRO-3 style),
           batch split over every device;
  fsdp_tp  as fsdp over `fsdp`, plus Megatron tensor parallelism over `tensor`: heads, MLP and
           vocab dimensions split, so each attention head's and MLP column's math stays local.
A config's `sharding_rules` overrides a preset's rules name by name (`rules_for`); the translation
of names to a PartitionSpec is flax's (`flax.linen.logical_to_mesh_axes`), the mesh is
`jax.make_mesh`'s. A parameter without `logical_axes` gets names from its shape
(`infer_logical_axes`) or, if it is large and no dimension can be named, an error naming it.
"""

import contextlib
import contextvars

import difflib
import os

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over every data-parallel axis

RULES = {
    "dp": {"batch": BATCH},
    "fsdp": {"batch": BATCH, "embed": "fsdp"},
    "fsdp_tp": {"batch": BATCH, "embed": "fsdp", "heads": "tensor", "mlp": "tensor",
                "vocab": "tensor", "act_heads": "tensor", "act_mlp": "tensor",
                "act_vocab": "tensor"},
}

# Logical names the model uses (parameters and activations); an override must name one of them.
LOGICAL_NAMES = ("batch", "seq", "embed", "heads", "mlp", "vocab", "norm", "head_dim", "layers",
                 "act_embed", "act_heads", "act_mlp", "act_vocab")
# An unannotated parameter this small (biases, norms, scalars) is replicated without complaint.
REPLICATE_BELOW = 1 << 16

_ACTIVE = contextvars.ContextVar("phi1_activation_sharding", default=None)


def maybe_init_distributed():
  """Multi-host: one process per host, started by SLURM (auto-detected) or with
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID set. Call it before
  any JAX computation: every process then sees every host's devices, and `make_mesh` spans them."""
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not address and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
    return
  # CPU hosts (tests, CPU clusters) need a collectives backend; GPUs use NCCL regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address:
    try:
      n, i = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except KeyError as e:
      raise SystemExit(f"JAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not") from e
    jax.distributed.initialize(address, num_processes=n, process_id=i)
  else:
    jax.distributed.initialize()


def make_mesh(preset: str, devices=None, tensor: int = 2) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all visible) for a preset."""
  if preset not in RULES:
    raise ValueError(f"mesh preset must be one of {sorted(RULES)}, got {preset!r}")
  devices = np.asarray(jax.devices() if devices is None else devices)
  n = devices.size
  if preset == "dp":
    shape = (n, 1, 1)
  elif preset == "fsdp":
    shape = (1, n, 1)
  else:
    if n % tensor:
      raise ValueError(f"fsdp_tp needs the device count ({n}) divisible by tensor={tensor}")
    shape = (1, n // tensor, tensor)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=list(devices.flat))


def rules_for(preset: str, overrides=None) -> dict:
  """The preset's logical-name -> mesh-axes rules with `overrides` (a config's `sharding_rules`:
  name -> mesh axis, list of mesh axes, or None to replicate) applied on top."""
  if preset not in RULES:
    raise ValueError(f"mesh preset must be one of {sorted(RULES)}, got {preset!r}")
  rules = dict(RULES[preset])
  for name, axes in dict(overrides or {}).items():
    if name not in LOGICAL_NAMES:
      hint = difflib.get_close_matches(name, LOGICAL_NAMES, n=1)
      raise ValueError(f"sharding_rules: unknown logical axis {name!r}"
                       + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {LOGICAL_NAMES}"))
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"sharding_rules.{name}: mesh axis {axis!r} is not one of {MESH_AXES}")
    rules[name] = axes
  return rules


def logical_to_spec(names, rules) -> P:
  """PartitionSpec for a tuple of logical names (names without a rule are replicated)."""
  if names is None:
    return P()
  return nn.logical_to_mesh_axes(tuple(names), tuple(rules.items()))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the data-parallel axes."""
  return int(np.prod([mesh.shape[a] for a in BATCH]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def param_shardings(state, mesh: Mesh, rules, dim_names: dict | None = None):
  """An nnx.State of NamedShardings (same structure), from each Variable's `logical_axes`.

  A Variable without them gets names from its shape (`infer_logical_axes` with `dim_names`)."""
  def spec(path, var):
    names = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if names is None:
      names = infer_logical_axes(_path_name(path), shape, dim_names or {})
    _check_divisible(shape, names, mesh, rules)
    return var.replace(NamedSharding(mesh, logical_to_spec(names, rules)))
  return jax.tree_util.tree_map_with_path(spec, state,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable))


def infer_logical_axes(name: str, shape, dim_names: dict):
  """Logical names for an unannotated parameter, from its shape.

  `dim_names` maps a size to a name (the model's d_model -> "embed", d_ff -> "mlp", vocab ->
  "vocab"); each dimension of a known size gets that name once (a [D, D] matrix is ("embed", None),
  split like the model's own square matrices under fsdp). Small parameters are replicated. A large
  one with no nameable dimension raises: replicating it silently would copy it to every device."""
  names, used = [], set()
  for dim in shape:
    name_of_dim = dim_names.get(dim)
    names.append(name_of_dim if name_of_dim not in used else None)
    used.add(name_of_dim)
  if any(names) or int(np.prod(shape, dtype=np.int64)) < REPLICATE_BELOW:
    return tuple(names)
  raise ValueError(f"parameter {name} of shape {tuple(shape)} has no logical_axes and no dimension "
                   f"of a known size ({dim_names}); give it metadata, e.g. nnx.Param(value, "
                   "logical_axes=('embed', 'mlp')), or kernel_metadata={'logical_axes': ...}")


def _path_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _check_divisible(shape, names, mesh, rules):
  for dim, name in zip(shape, names or ()):
    axes = rules.get(name)
    if axes is None:
      continue
    size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]))
    if dim % size:
      raise ValueError(f"parameter dimension '{name}' of size {dim} is not divisible by its mesh "
                       f"axes {axes} (size {size}); choose another mesh preset or model size")


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """While tracing inside this context, `constrain` pins activations to the mesh."""
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active():
  """(mesh, rules) while tracing inside `activation_sharding`, else None."""
  return _ACTIVE.get()


def constrain(x, names):
  """Pin activation `x` to the sharding its logical `names` map to; a no-op outside a mesh."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return nn.with_logical_constraint(x, tuple(names), rules=tuple(rules.items()), mesh=mesh)
