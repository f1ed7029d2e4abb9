"""Sharding: config overrides of the logical-axis rules, and parameters without logical axes."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from phi1 import config as config_lib, sharding, train
from phi1.model import Phi1Config


def _config(**overrides):
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config.tiny(vocab_size=512, n_layers=1))
  c.batch_size, c.seq_len, c.precision = 8, 64, "fp32"
  for key, value in overrides.items():
    c[key] = value
  return c


def _spec(trainer, *path):
  node = trainer.state_shardings.params
  for key in path:
    node = node[key]
  return node.get_value().spec


def test_a_rule_override_changes_a_parameters_sharding_on_8_devices():
  assert jax.device_count() == 8
  stock = train.Trainer(_config(mesh="fsdp"))
  assert _spec(stock, "layers", 0, "mlp", "fc1", "kernel") == P("fsdp", None)
  moved = train.Trainer(_config(mesh="fsdp", sharding_rules={"embed": None, "mlp": "fsdp"}))
  assert _spec(moved, "layers", 0, "mlp", "fc1", "kernel") == P(None, "fsdp")
  assert _spec(moved, "lm_head", "kernel") == P(None, None)  # embed replicated, vocab has no rule
  state = moved.init_state()
  fc1 = state.params["layers"][0]["mlp"]["fc1"]["kernel"].get_value()
  assert fc1.addressable_shards[0].data.shape == (128, 512 // 8)


@pytest.mark.parametrize("rules, match", [({"mpl": "fsdp"}, "did you mean 'mlp'"),
                                          ({"mlp": "fdsp"}, "mesh axis 'fdsp'")])
def test_bad_rule_overrides_are_named(rules, match):
  with pytest.raises(ValueError, match=match):
    sharding.rules_for("fsdp", rules)


class _Unannotated(nnx.Module):
  """A parameter added with no logical_axes metadata, as a quick experiment would."""

  def __init__(self, shape):
    self.w = nnx.Param(jnp.zeros(shape))


def _shardings(shape):
  state = nnx.state(nnx.eval_shape(lambda: _Unannotated(shape)), nnx.Param)
  mesh = sharding.make_mesh("fsdp")
  dims = {128: "embed", 512: "mlp", 50: "vocab"}
  return sharding.param_shardings(state, mesh, sharding.rules_for("fsdp"), dims)["w"]


def test_an_unannotated_parameter_gets_axes_from_its_shape():
  assert _shardings((512, 128)).get_value().spec == P(None, "fsdp")  # d_ff x d_model
  assert _shardings((128, 128)).get_value().spec == P("fsdp", None)  # square: first dim only
  assert _shardings((7, 3)).get_value().spec == P(None, None)  # small: replicated


def test_a_large_unannotated_parameter_with_no_known_dimension_is_an_error_naming_it():
  with pytest.raises(ValueError, match=r"parameter w of shape \(300, 300\) has no logical_axes"):
    _shardings((300, 300))
