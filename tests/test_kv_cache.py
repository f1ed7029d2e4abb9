"""KV cache: prefill + one-token steps give the full forward's logits, with left-padded batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1.kv_cache import KVCache
from phi1.model import Phi1, Phi1Config


@pytest.fixture(scope="module")
def model():
  return Phi1(Phi1Config.tiny(init_std=0.2, max_seq_len=64), rngs=nnx.Rngs(0))


def _left_pad(rows, P):
  tokens = np.zeros((len(rows), P), np.int32)
  segment_ids = np.zeros((len(rows), P), np.int32)
  positions = np.zeros((len(rows), P), np.int32)
  for r, row in enumerate(rows):
    tokens[r, P - len(row):] = row
    segment_ids[r, P - len(row):] = 1
    positions[r, P - len(row):] = np.arange(len(row))
  return jnp.asarray(tokens), jnp.asarray(segment_ids), jnp.asarray(positions)


def _cached_logits(model, prompts, continuations, P=8, cache_len=16, pad_id=0):
  """Logits of each continuation token, fed one at a time through the cache after a prefill."""
  B = len(prompts)
  tokens, segment_ids, positions = _left_pad(prompts, P)
  tokens = jnp.where(segment_ids > 0, tokens, pad_id)
  # Jitted (the model's parameters become constants) only because op-by-op dispatch is slow.
  run = jax.jit(lambda *args, cache: model.hidden_states(*args, cache=cache))
  cache = KVCache.init(model.config, B, cache_len)
  h, cache = run(tokens, segment_ids, positions, cache=cache)
  assert int(cache.index) == P
  steps = [model.logits(h[:, -1:])[:, 0]]
  pos = jnp.asarray([len(p) for p in prompts])
  for t in range(len(continuations[0]) - 1):
    token_B1 = jnp.asarray([[c[t]] for c in continuations])
    h, cache = run(token_B1, jnp.ones((B, 1), jnp.int32), (pos + t)[:, None], cache=cache)
    assert int(cache.index) == P + t + 1  # one write slot shared by the whole batch
    steps.append(model.logits(h)[:, 0])
  return np.stack(steps, axis=1)


def test_cached_decoding_matches_full_forward_with_left_padding(model):
  prompts = [[5, 9, 2], [7, 1, 8, 3, 3, 4, 6, 2], [11]]
  continuations = [[20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43]]
  cached = _cached_logits(model, prompts, continuations)
  for r, (p, c) in enumerate(zip(prompts, continuations)):
    full = np.asarray(model(jnp.asarray([p + c])))[0, len(p) - 1:len(p) + len(c) - 1]
    np.testing.assert_allclose(cached[r], full, atol=1e-4, rtol=1e-4)


def test_padding_slots_are_never_attended(model):
  prompts, continuations = [[5, 9, 2], [7, 1, 8, 3, 3]], [[20, 21], [30, 31]]
  a = _cached_logits(model, prompts, continuations, pad_id=0)
  b = _cached_logits(model, prompts, continuations, pad_id=77)
  np.testing.assert_array_equal(a, b)


def test_cache_longer_than_context_is_rejected(model):
  with pytest.raises(ValueError, match="exceeds the model context"):
    KVCache.init(model.config, 1, model.config.max_seq_len + 1)


def test_cache_is_a_jittable_pytree(model):
  cache = KVCache.init(model.config, 2, 16)
  leaves = jax.tree.leaves(cache)
  assert len(leaves) == 4 * model.config.n_layers
  moved = jax.jit(lambda c: c)(cache)
  assert moved.max_len == 16 and int(moved.index) == 0
