"""LogWindow: the logged train loss is the window's mean, and throughput excludes compilation."""

import time

import jax.numpy as jnp
import pytest

from phi1 import log_window


def test_loss_is_the_window_mean_skips_and_tokens_are_summed_the_rest_is_the_last_step():
  window = log_window.LogWindow(tokens_per_step=100)
  for i, loss in enumerate([4.0, 2.0, 3.0]):
    window.add({"loss": jnp.float32(loss), "lr": jnp.float32(i), "skipped": jnp.int32(i % 2),
                "tokens": jnp.float32(10)}, timed=i > 0)
  time.sleep(0.01)
  out = window.close(3).fetch()
  assert out["loss"] == pytest.approx(3.0) and out["lr"] == 2.0
  assert out["skipped"] == 1 and out["tokens"] == 30
  assert 0 < out["tokens_per_sec"] < 200 / 0.01  # two timed steps of 100 tokens in >= 10 ms


def test_each_window_starts_empty():
  window = log_window.LogWindow(tokens_per_step=1)
  window.add({"loss": jnp.float32(10.0)})
  window.close(1).fetch()
  window.add({"loss": jnp.float32(2.0)})
  assert window.close(2).fetch()["loss"] == 2.0
