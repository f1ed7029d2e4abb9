"""A model's layer layout: its blocks stacked on a leading [n_layers] axis and scanned
(`scan_layers=True`, what the full-size recipes train) or one module per layer (what HF
checkpoints hold and `Phi1.capture` needs). Both layouts compute the same function with the same
weights; these convert a built model between them. The result is built by the model's own class, so
a Phi1 subclass (a model_fn variant, phi1/model_fn.py) stays that variant."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from phi1.model import Phi1


def unstack_layers(model: Phi1) -> Phi1:
  """The same model with scan_layers=False: the stacked [n_layers, ...] block parameters become
  n_layers separate blocks (what HF conversion and `capture` need). Returns `model` if unstacked."""
  if not model.config.scan_layers:
    return model
  config = dataclasses.replace(model.config, scan_layers=False)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  stacked = params.pop("layers")
  params["layers"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked)
                      for i in range(config.n_layers)}
  return _built(type(model), config, params)


def stack_layers(model: Phi1) -> Phi1:
  """The inverse of `unstack_layers`: the same model with scan_layers=True, its n_layers blocks'
  parameters stacked on a leading [n_layers] axis (HF weights into a scanned recipe's run).
  Returns `model` if already stacked."""
  if model.config.scan_layers:
    return model
  config = dataclasses.replace(model.config, scan_layers=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  blocks = params.pop("layers")
  params["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *[blocks[i]
                                                               for i in range(config.n_layers)])
  return _built(type(model), config, params)


def _built(cls, config, params: dict) -> Phi1:
  """A `cls` (Phi1 or a subclass) of `config` holding `params` (a pure dict in that config's
  layout)."""
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
  nnx.replace_by_pure_dict(abstract_params, params)
  # Non-parameter state (built under jit, so no parameter initialiser runs).
  rest = jax.jit(lambda: nnx.state(cls(config, rngs=nnx.Rngs(0)), nnx.Not(nnx.Param)))()
  return nnx.merge(graphdef, abstract_params, rest)


def with_layer_layout(model: Phi1, scan_layers: bool) -> Phi1:
  """`model` with its blocks stacked (scan_layers=True) or separate; the weights are the same."""
  return stack_layers(model) if scan_layers else unstack_layers(model)
