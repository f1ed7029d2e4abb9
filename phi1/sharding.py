"""The one place that knows about devices: mesh, logical-axis rules, and their presets.

The model names logical axes only (`logical_axes` metadata on parameters, `constrain(x, names)` on
activations). A preset maps each logical name to mesh axes of the mesh (`data`, `fsdp`, `tensor`):
  dp       parameters replicated, batch split over every device;
  fsdp     parameters (and so optimizer state) split along `embed` over every device (ZeRO-3 style),
           batch split over every device;
  fsdp_tp  as fsdp over `fsdp`, plus Megatron tensor parallelism over `tensor`: heads, MLP and
           vocab dimensions split, so each attention head's and MLP column's math stays local.
"""

import contextlib
import contextvars

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

_ACTIVE = contextvars.ContextVar("phi1_activation_sharding", default=None)


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
  return Mesh(devices.reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(names, rules) -> P:
  """PartitionSpec for a tuple of logical names (unknown names are replicated)."""
  if names is None:
    return P()
  return P(*(rules.get(n) for n in names))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the data-parallel axes."""
  return int(np.prod([mesh.shape[a] for a in BATCH]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def param_shardings(state, mesh: Mesh, rules):
  """An nnx.State of NamedShardings (same structure), from each Variable's `logical_axes`."""
  def spec(var):
    names = var.get_metadata().get("logical_axes")
    _check_divisible(var.get_value().shape, names, mesh, rules)
    return var.replace(NamedSharding(mesh, logical_to_spec(names, rules)))
  return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


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
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))
