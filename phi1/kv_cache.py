"""Preallocated key/value cache for decoding, a pytree that `jax.jit` carries through the loop.

Slots are shared by the whole batch: prompts of different lengths are left-padded, padded slots are
marked invalid and never attended to, and every row writes its next token at the same slot `index`.
So one compiled step serves any mix of prompt lengths.
"""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerCache:
  k_BSHK: jax.Array
  v_BSHK: jax.Array
  valid_BS: jax.Array  # True where the slot holds a real (non-padding) token
  index: jax.Array  # int32 scalar: the first slot the next call writes

  def update(self, k_BTHK, v_BTHK, segment_ids_BT=None) -> "LayerCache":
    B, T = k_BTHK.shape[:2]
    valid_BT = jnp.ones((B, T), bool) if segment_ids_BT is None else segment_ids_BT > 0
    at = (0, self.index, 0, 0)
    return LayerCache(
        k_BSHK=jax.lax.dynamic_update_slice(self.k_BSHK, k_BTHK.astype(self.k_BSHK.dtype), at),
        v_BSHK=jax.lax.dynamic_update_slice(self.v_BSHK, v_BTHK.astype(self.v_BSHK.dtype), at),
        valid_BS=jax.lax.dynamic_update_slice(self.valid_BS, valid_BT, (0, self.index)),
        index=self.index)

  def mask_B1TS(self, T: int):
    """Query t (at slot index + t) sees valid slots up to and including its own."""
    S = self.k_BSHK.shape[1]
    q_slot_T = self.index + jnp.arange(T)
    causal_TS = jnp.arange(S)[None, :] <= q_slot_T[:, None]
    return (causal_TS[None] & self.valid_BS[:, None, :])[:, None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  layers: tuple[LayerCache, ...]

  @classmethod
  def init(cls, config, batch_size: int, max_len: int, dtype=jnp.float32) -> "KVCache":
    if max_len > config.max_seq_len:
      raise ValueError(f"cache length {max_len} exceeds the model context {config.max_seq_len}")
    shape = (batch_size, max_len, config.n_heads, config.head_dim)
    layer = LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.zeros((batch_size, max_len), bool), jnp.zeros((), jnp.int32))
    return cls(layers=(layer,) * config.n_layers)

  @property
  def index(self):
    return self.layers[0].index

  @property
  def max_len(self) -> int:
    return self.layers[0].k_BSHK.shape[1]

  def layer(self, i: int) -> LayerCache:
    return self.layers[i]

  def replace_layers(self, layers, advance: int) -> "KVCache":
    return KVCache(tuple(dataclasses.replace(l, index=l.index + advance) for l in layers))
