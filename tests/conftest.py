"""Test set-up shared by every test module.

JAX sees 8 fake CPU devices so sharding tests run here exactly as on an 8-GPU node. This must happen
before jax is imported anywhere, hence at conftest import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="module")
def quick_compiles():
  """Compile without XLA optimisations for a module whose programs run only a few times (Pallas
  interpret-mode kernels): optimising that code costs more time than it saves."""
  import jax
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
