"""KV-cache decoding under `jax.jit`: batched prompts, greedy / temperature / top-p, EOS, stops.

How a batch runs:
  1. prefill (one jitted call): prompts are left-padded to a length bucket P; padding gets segment
     id 0 (never attended to) and each row's positions restart at 0 on its first real token, so a
     row decodes exactly as it would alone. The cache (`phi1/kv_cache.py`) is preallocated for S
     slots.
  2. decode (one jitted call per chunk): a `lax.while_loop` feeds one token per step through the
     cache, sampling on device, and exits once every row has hit EOS or the step limit. Nothing
     returns to Python per token.
Stop strings must be checked on decoded text, which needs the tokenizer on the host. So, only when
stop strings are given, the loop runs in chunks of `check_every` tokens (same compiled function, the
limit is a traced argument); between chunks the host decodes the rows still running and marks rows
whose text contains a stop string as done. Without stop strings there is one decode call in all.

Compiles: P and S are rounded up to powers of two (at least 16), and the sampling mode (greedy,
top-p or not) is static, so there is one prefill and one decode compile per (batch, P, S, mode);
`TRACE_COUNTS` counts them (tests check it).
"""

import collections
import dataclasses
import functools
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phi1 import sharding
from phi1.kv_cache import KVCache
from phi1.model import DTYPES, Phi1

MIN_BUCKET = 16
TRACE_COUNTS = collections.Counter()  # traces (= compiles) of "prefill" and "decode"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  cache: KVCache
  last_B: jax.Array  # int32: the token most recently generated per row (next step's input)
  position_B: jax.Array  # int32: its position (prompt length + tokens generated - 1)
  step: jax.Array  # int32 scalar: tokens generated so far (== filled columns of tokens_BN)
  done_B: jax.Array  # bool: row finished (EOS, or a stop string seen by the host)
  tokens_BN: jax.Array  # int32: generated tokens; columns past `step` are undefined


def bucket(n: int) -> int:
  """Round a length up to a power of two (at least MIN_BUCKET): bounds the number of compiles."""
  return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def _sample(logits_BV, seed, row_ids_B, step, temperature, top_p, vocab_limit, *, greedy: bool,
            use_top_p: bool):
  # Ids past the tokenizer's vocabulary (the embedding table is padded, paper §2.3) cannot decode.
  logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  # A row's randomness depends only on (seed, its prompt's index, step), not on its batch
  # neighbours or on batch_size.
  row_key = lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), step)
  step_keys_B = jax.vmap(row_key)(row_ids_B)
  logits_BV = logits_BV / temperature
  if not use_top_p:
    return jax.vmap(jax.random.categorical)(step_keys_B, logits_BV).astype(jnp.int32)
  # Nucleus sampling (Holtzman et al. 2020): keep the smallest prefix of tokens, by descending
  # probability, whose mass reaches top_p; the most likely token is always kept.
  order_BV = jnp.argsort(-logits_BV, axis=-1)  # stable: ties keep argmax's lowest-index choice
  sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  sorted_BV = jnp.where(mass_before_BV < top_p, sorted_BV, -jnp.inf)
  pick_B = jax.vmap(jax.random.categorical)(step_keys_B, sorted_BV)
  return jnp.take_along_axis(order_BV, pick_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _model(graphdef, params):
  model = nnx.merge(graphdef, params)
  model.eval()  # no dropout while decoding (this traced copy only; the caller's model is untouched)
  return model


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "n_out", "greedy",
                                             "use_top_p"))
def _prefill(graphdef, params, tokens_BP, lengths_B, seed, row_ids_B, temperature, top_p,
             vocab_limit, eos_id, *, cache_len, n_out, greedy, use_top_p):
  TRACE_COUNTS["prefill"] += 1
  model = _model(graphdef, params)
  B, P = tokens_BP.shape
  segment_ids_BP = (jnp.arange(P)[None, :] >= P - lengths_B[:, None]).astype(jnp.int32)
  positions_BP = jnp.maximum(jnp.cumsum(segment_ids_BP, axis=1) - 1, 0)
  cache = KVCache.init(model.config, B, cache_len, DTYPES[model.config.dtype])
  h_BPD, cache = model.hidden_states(tokens_BP, segment_ids_BP, positions_BP, cache=cache)
  logits_BV = model.logits(h_BPD[:, -1:])[:, 0]  # only the last position predicts a new token
  first_B = _sample(logits_BV, seed, row_ids_B, 0, temperature, top_p, vocab_limit, greedy=greedy,
                    use_top_p=use_top_p)
  return DecodeState(
      cache=cache, last_B=first_B, position_B=lengths_B.astype(jnp.int32),
      step=jnp.ones((), jnp.int32), done_B=first_B == eos_id,
      tokens_BN=jnp.zeros((B, n_out), jnp.int32).at[:, 0].set(first_B))


@functools.partial(jax.jit, static_argnames=("graphdef", "greedy", "use_top_p"),
                   donate_argnames=("state",))
def _decode(graphdef, params, state: DecodeState, limit, seed, row_ids_B, temperature, top_p,
            vocab_limit, eos_id, *, greedy, use_top_p):
  TRACE_COUNTS["decode"] += 1
  model = _model(graphdef, params)
  B = state.last_B.shape[0]
  ones_B1 = jnp.ones((B, 1), jnp.int32)

  def running(s: DecodeState):
    return (s.step < limit) & ~jnp.all(s.done_B)

  def step(s: DecodeState):
    h_B1D, cache = model.hidden_states(s.last_B[:, None], ones_B1, s.position_B[:, None],
                                       cache=s.cache)
    logits_BV = model.logits(h_B1D)[:, 0]
    next_B = _sample(logits_BV, seed, row_ids_B, s.step, temperature, top_p, vocab_limit,
                     greedy=greedy, use_top_p=use_top_p)
    next_B = jnp.where(s.done_B, jnp.maximum(eos_id, 0), next_B)  # finished rows emit padding
    return DecodeState(
        cache=cache, last_B=next_B, position_B=s.position_B + 1, step=s.step + 1,
        done_B=s.done_B | (next_B == eos_id),
        tokens_BN=jax.lax.dynamic_update_slice(s.tokens_BN, next_B[:, None], (0, s.step)))

  return jax.lax.while_loop(running, step, state)


def _check_args(model, prompt_tokens, max_new_tokens, temperature, top_p, batch_size):
  c = model.config
  if not isinstance(prompt_tokens, (list, tuple)) or not prompt_tokens:
    raise ValueError("prompt_tokens must be a non-empty list of token-id lists")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
  for i, row in enumerate(prompt_tokens):
    if len(row) == 0:
      raise ValueError(f"prompt {i} is empty: give at least one token (e.g. a BOS/EOS token)")
    if len(row) + max_new_tokens > c.max_seq_len:
      raise ValueError(f"prompt {i} has {len(row)} tokens; with max_new_tokens={max_new_tokens} it "
                       f"exceeds the context max_seq_len={c.max_seq_len}: shorten one of them")
    if min(row) < 0 or max(row) >= c.vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {c.vocab_size}): does the tokenizer "
                       "match the model?")


def generate_tokens(model: Phi1, prompt_tokens: Sequence[Sequence[int]], *,
                    max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                    eos_id: int | None = None, seed: int = 0, batch_size: int | None = None,
                    should_stop: Callable[[list[int]], bool] | None = None,
                    check_every: int = 16, vocab_limit: int | None = None,
                    mesh: jax.sharding.Mesh | None = None,
                    sample_keys: Sequence[int] | None = None) -> list[list[int]]:
  """Generate up to `max_new_tokens` after each prompt; returns the new tokens only.

  A row ends at `eos_id` (excluded from the output) or when `should_stop(tokens_so_far)` is true;
  `should_stop` is checked every `check_every` tokens, so such a row may run a few tokens past the
  point where it became true (callers cut, as `generate` does with stop strings). Only ids below
  `vocab_limit` (default: the model's vocab_size) are generated. Prompts are
  sorted by length and run `batch_size` at a time (default: all at once); the last batch is padded
  to the same size so it reuses the compiled functions.

  A row's randomness depends only on (seed, its sample key, step): the key is the prompt's index
  unless `sample_keys` gives one per prompt (an eval that resumes passes keys that name the
  sample, so a sample drawn after a restart equals the one an uninterrupted run drew).

  With `mesh` (the params' mesh, as in a training run) each batch is split over the mesh's
  data-parallel axes: every device decodes its own rows, on every process of a multi-host run, and
  the tokens are gathered back so each process returns all of them. Every process must call this
  with the same prompts. `batch_size` is rounded up to a multiple of the number of batch shards.
  """
  _check_args(model, prompt_tokens, max_new_tokens, temperature, top_p, batch_size)
  c = model.config
  graphdef, params = nnx.split(model)
  greedy = temperature == 0.0
  use_top_p = not greedy and top_p < 1.0
  # Scalars go in as numpy values: jit's C++ fast path transfers them far quicker than jnp arrays.
  eos = np.int32(-1 if eos_id is None else eos_id)
  temperature, top_p = np.float32(max(temperature, 1e-6)), np.float32(top_p)
  vocab_limit = np.int32(c.vocab_size if vocab_limit is None else min(vocab_limit, c.vocab_size))
  seed = np.uint32(seed % 2**32)
  if sample_keys is not None and len(sample_keys) != len(prompt_tokens):
    raise ValueError(f"{len(sample_keys)} sample_keys for {len(prompt_tokens)} prompts")
  keys = np.asarray(range(len(prompt_tokens)) if sample_keys is None else sample_keys,
                    np.int64).astype(np.int32)
  order = sorted(range(len(prompt_tokens)), key=lambda i: len(prompt_tokens[i]))
  B = batch_size or len(order)
  put = _placer(mesh)
  if mesh is not None:
    shards = sharding.batch_shards(mesh)
    B = -(-B // shards) * shards
  results: list[list[int] | None] = [None] * len(order)
  for start in range(0, len(order), B):
    ids = order[start:start + B]
    rows = [list(prompt_tokens[i]) for i in ids]
    rows += [rows[0]] * (B - len(rows))  # filler rows; their output is dropped
    longest = max(map(len, rows))
    P = bucket(longest)
    cache_len = min(bucket(P + max_new_tokens), c.max_seq_len)
    P = min(P, cache_len - max_new_tokens)  # unbucketed only near the context limit
    tokens_BP = np.zeros((B, P), np.int32)
    for r, row in enumerate(rows):
      tokens_BP[r, P - len(row):] = row  # left padding: every row's last prompt token is at P - 1
    lengths_B = np.asarray([len(row) for row in rows], np.int32)
    row_ids_B = keys[ids + [ids[0]] * (B - len(ids))]
    sampling = dict(greedy=greedy, use_top_p=use_top_p)
    tokens_BP, lengths_B, row_ids_B = put(tokens_BP), put(lengths_B), put(row_ids_B)
    state = _prefill(graphdef, params, tokens_BP, lengths_B, seed, row_ids_B, temperature,
                     top_p, vocab_limit, eos, cache_len=cache_len, n_out=cache_len - P, **sampling)
    while True:
      limit = max_new_tokens if should_stop is None else min(
          int(_to_host(state.step)) + check_every, max_new_tokens)
      state = _decode(graphdef, params, state, np.int32(limit), seed, row_ids_B, temperature, top_p,
                      vocab_limit, eos, **sampling)
      step, done_B, tokens_BN = map(_to_host, (state.step, state.done_B, state.tokens_BN))
      rows_out = [_cut_at_eos(tokens_BN[r, :step].tolist(), eos_id) for r in range(B)]
      if should_stop is None or step >= max_new_tokens or done_B.all():
        break
      stopped_B = done_B | np.asarray([should_stop(t) for t in rows_out])
      if stopped_B.all():
        break
      state = dataclasses.replace(state, done_B=put(stopped_B))
    for r, i in enumerate(ids):
      results[i] = rows_out[r]
  return results


def _placer(mesh) -> Callable[[np.ndarray], jax.Array | np.ndarray]:
  """Host batch arrays as they enter the jitted functions: as they are without a mesh, else as
  global arrays split over the batch axes (each process fills only its own devices' rows)."""
  if mesh is None:
    return lambda x: x
  def put(x: np.ndarray) -> jax.Array:
    where = sharding.batch_sharding(mesh, x.ndim)
    return jax.make_array_from_callback(x.shape, where, lambda idx: x[idx])
  return put


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host; rows held by other processes are gathered from them."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _cut_at_eos(tokens: list[int], eos_id: int | None) -> list[int]:
  if eos_id is not None and eos_id in tokens:
    return tokens[:tokens.index(eos_id)]
  return tokens


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """`text` up to (excluding) the earliest occurrence of any stop string."""
  cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
  return text[:cut]


def generate(model: Phi1, tokenizer, prompts: list[str], *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | None = None,
             seed: int = 0, batch_size: int | None = None, truncate: str = "error",
             mesh: jax.sharding.Mesh | None = None,
             sample_keys: Sequence[int] | None = None) -> list[str]:
  """Completions of `prompts` (text), cut before the first stop string; sampling is seeded.

  `tokenizer` has `encode(text) -> list[int]`, `decode(ids) -> str`, `eos_id` and `vocab_size`
  (phi1/tokenizer.py); ids the tokenizer does not know are never generated.
  A prompt that leaves no room for `max_new_tokens` in the context raises, or with
  truncate="left" loses its first tokens (for few-shot prompts: the oldest examples go first, the
  question stays), as evaluation harnesses do; a warning says how many prompts were cut.
  `mesh` splits each batch over the mesh's data-parallel axes, and `sample_keys` fix each
  prompt's randomness (see `generate_tokens`).
  """
  if isinstance(prompts, str):
    raise ValueError("prompts must be a list of strings, not one string")
  if truncate not in ("error", "left"):
    raise ValueError(f"truncate must be 'error' or 'left', got {truncate!r}")
  stop = [s for s in (stop or []) if s]
  should_stop = None
  if stop:
    should_stop = lambda tokens: any(s in tokenizer.decode(tokens) for s in stop)
  prompt_tokens = [tokenizer.encode(p) for p in prompts]
  room = model.config.max_seq_len - max_new_tokens
  if truncate == "left" and room >= 1:
    cut = sum(len(t) > room for t in prompt_tokens)
    if cut:
      warnings.warn(f"{cut} of {len(prompts)} prompts are longer than the {room} tokens the "
                    f"context leaves beside max_new_tokens={max_new_tokens}; their first tokens "
                    "were dropped", stacklevel=2)
      prompt_tokens = [t[-room:] for t in prompt_tokens]
  tokens = generate_tokens(
      model, prompt_tokens, max_new_tokens=max_new_tokens,
      temperature=temperature, top_p=top_p, eos_id=tokenizer.eos_id, seed=seed,
      batch_size=batch_size, should_stop=should_stop, vocab_limit=tokenizer.vocab_size,
      mesh=mesh, sample_keys=sample_keys)
  return [cut_at_stop(tokenizer.decode(t), stop) for t in tokens]
