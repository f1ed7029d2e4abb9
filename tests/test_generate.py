"""Generation: cached decoding equals full recomputation; sampling, stops, EOS, compile counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1 import generate as gen
from phi1.model import Phi1, Phi1Config

PROMPTS = [[5, 9, 2], [7, 1, 8, 3, 3, 4, 6, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18], [11]]


class CharTokenizer:
  """One character per id (lossless both ways), so stop strings map to exact token positions."""
  eos_id = 0
  vocab_size = 500

  def encode(self, text):
    return [ord(ch) - 0x100 for ch in text]

  def decode(self, ids):
    return "".join(chr(0x100 + i) for i in ids)


@pytest.fixture(scope="module")
def model():
  # A wider init than the default makes the next-token distribution peaked, so greedy choices are
  # far from ties and comparisons between two computation orders are meaningful.
  return Phi1(Phi1Config.tiny(init_std=0.3, max_seq_len=128), rngs=nnx.Rngs(0))


def _greedy_by_full_forward(model, prompt, n, width=32):
  """Recompute the whole sequence every step: no cache. Right padding to a fixed width keeps one
  compile and cannot change earlier positions (causal attention)."""
  forward = jax.jit(lambda t: model(t)[0])
  tokens = list(prompt)
  for _ in range(n):
    logits_TV = forward(jnp.asarray([tokens + [0] * (width - len(tokens))]))
    tokens.append(int(jnp.argmax(logits_TV[len(tokens) - 1])))
  return tokens[len(prompt):]


def test_cached_greedy_equals_full_forward_each_step(model):
  out = gen.generate_tokens(model, PROMPTS, max_new_tokens=12)
  for prompt, tokens in zip(PROMPTS, out):
    assert tokens == _greedy_by_full_forward(model, prompt, 12)


def test_batch_size_and_order_do_not_change_greedy_output(model):
  together = gen.generate_tokens(model, PROMPTS, max_new_tokens=12)
  in_pairs = gen.generate_tokens(model, PROMPTS, max_new_tokens=12, batch_size=2)  # last one padded
  alone = [gen.generate_tokens(model, [p], max_new_tokens=12)[0] for p in PROMPTS]
  assert together == in_pairs == alone


def test_one_compile_per_batch_and_length_bucket(model):
  gen.generate_tokens(model, [[1, 2, 3], [4, 5]], max_new_tokens=20)  # P bucket 16, cache 32
  before = dict(gen.TRACE_COUNTS)
  # Other prompt lengths and max_new_tokens in the same buckets, and the chunked (stop) path.
  gen.generate_tokens(model, [[9] * 7, [4, 5, 6]], max_new_tokens=14)
  gen.generate_tokens(model, [[1], [2] * 12], max_new_tokens=9, should_stop=lambda t: False,
                      check_every=2)
  assert dict(gen.TRACE_COUNTS) == before
  gen.generate_tokens(model, [[1, 2, 3]] * 3, max_new_tokens=20)  # a new batch size compiles
  assert gen.TRACE_COUNTS["prefill"] == before["prefill"] + 1
  assert gen.TRACE_COUNTS["decode"] == before["decode"] + 1


def test_sampling_is_reproducible_with_a_seed(model):
  kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
  a = gen.generate_tokens(model, PROMPTS, seed=1, **kw)
  b = gen.generate_tokens(model, PROMPTS, seed=1, **kw)
  c = gen.generate_tokens(model, PROMPTS, seed=2, **kw)
  assert a == b
  assert a != c
  assert a != gen.generate_tokens(model, PROMPTS, max_new_tokens=16)  # it really samples


def test_repeated_prompts_get_independent_samples(model):
  # pass@k draws n samples of a task by repeating its prompt in one call (phi1/evals/run.py).
  out = gen.generate_tokens(model, [PROMPTS[0]] * 4, max_new_tokens=12, temperature=1.0)
  assert len({tuple(row) for row in out}) == 4


def test_a_prompt_samples_the_same_alone_or_in_a_batch(model):
  kw = dict(max_new_tokens=12, temperature=1.0, seed=5)
  together = gen.generate_tokens(model, PROMPTS, **kw)
  assert together == [gen.generate_tokens(model, PROMPTS, batch_size=1, **kw)[i]
                      for i in range(len(PROMPTS))]


def test_generation_up_to_the_context_limit(model):
  prompt = list(range(1, 101))  # 100 + 28 new tokens = max_seq_len 128: the cache is not bucketed
  out = gen.generate_tokens(model, [prompt], max_new_tokens=28)[0]
  assert len(out) == 28
  assert out[:4] == _greedy_by_full_forward(model, prompt, 4, width=128)


def test_tiny_top_p_is_greedy(model):
  sampled = gen.generate_tokens(model, PROMPTS, max_new_tokens=12, temperature=1.5, top_p=1e-6)
  assert sampled == gen.generate_tokens(model, PROMPTS, max_new_tokens=12)


def test_top_p_only_draws_from_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  picks = np.asarray(gen._sample(logits, 0, jnp.arange(4000), 0, 1.0, 0.7, 4, greedy=False,
                                 use_top_p=True))
  counts = np.bincount(picks, minlength=4) / len(picks)
  assert counts[2] == counts[3] == 0  # mass before token 2 is 0.8 >= 0.7: cut
  np.testing.assert_allclose(counts[:2], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)


def test_eos_ends_a_row_and_is_not_returned(model):
  free = gen.generate_tokens(model, PROMPTS, max_new_tokens=12)
  eos = free[1][4]
  first = free[1].index(eos)
  out = gen.generate_tokens(model, PROMPTS, max_new_tokens=12, eos_id=eos)
  assert out[1] == free[1][:first]
  for row_free, row in zip(free, out):  # other rows stop at their own first eos, if any
    assert row == row_free[:row_free.index(eos)] if eos in row_free else row == row_free


def test_vocab_limit_masks_ids_the_tokenizer_cannot_decode(model):
  out = gen.generate_tokens(model, PROMPTS, max_new_tokens=24, vocab_limit=50)
  assert max(max(row) for row in out) < 50


def test_stop_strings_cut_text_and_end_the_row_early(model):
  tok = CharTokenizer()
  prompts = [tok.decode(p) for p in PROMPTS]
  full = gen.generate(model, tok, prompts, max_new_tokens=40)
  stop = full[0][6:8]
  cut = gen.generate(model, tok, prompts, max_new_tokens=40, stop=[stop, "never-seen"])
  assert cut[0] == full[0][:full[0].index(stop)]
  for f, c in zip(full[1:], cut[1:]):
    assert c == (f[:f.index(stop)] if stop in f else f)
  # The decode loop itself stops: the row runs at most one check interval past the stop.
  calls = []
  tokens = gen.generate_tokens(model, [PROMPTS[0]], max_new_tokens=40, check_every=4,
                               should_stop=lambda t: calls.append(len(t)) or len(t) >= 8)
  assert 8 <= len(tokens[0]) < 8 + 4 and calls[-1] == len(tokens[0])


def test_generate_with_the_project_tokenizer_interface(model):
  tok = CharTokenizer()
  out = gen.generate(model, tok, [tok.decode([3, 4, 5]), tok.decode([9])], max_new_tokens=8,
                     temperature=0.8, seed=3)
  assert len(out) == 2 and all(isinstance(s, str) and len(s) <= 8 for s in out)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_tokens=[[]], max_new_tokens=4), "empty"),
    (dict(prompt_tokens=[[1] * 120], max_new_tokens=20), "exceeds the context"),
    (dict(prompt_tokens=[[1, 600]], max_new_tokens=4), "outside"),
    (dict(prompt_tokens=[[1]], top_p=0.0, max_new_tokens=4), "top_p"),
    (dict(prompt_tokens=[[1]], temperature=-1.0, max_new_tokens=4), "temperature"),
    (dict(prompt_tokens=[[1]], max_new_tokens=0), "max_new_tokens"),
    (dict(prompt_tokens=[]), "non-empty"),
])
def test_bad_arguments_raise_clear_errors(model, kwargs, match):
  with pytest.raises(ValueError, match=match):
    gen.generate_tokens(model, **kwargs)


def test_a_single_string_is_rejected(model):
  with pytest.raises(ValueError, match="list of strings"):
    gen.generate(model, CharTokenizer(), "abc")


def test_left_truncation_keeps_the_end_of_a_prompt_longer_than_the_context(model):
  tok = CharTokenizer()
  long_ids = [1 + i % 400 for i in range(150)]  # 150 tokens; the context leaves 128 - 8 = 120
  short_ids = [3, 4, 5]
  prompts = [tok.decode(long_ids), tok.decode(short_ids)]
  with pytest.raises(ValueError, match="exceeds the context"):
    gen.generate(model, tok, prompts, max_new_tokens=8)
  with pytest.warns(UserWarning, match="1 of 2 prompts"):
    out = gen.generate(model, tok, prompts, max_new_tokens=8, truncate="left")
  expected = gen.generate(model, tok, [tok.decode(long_ids[-120:]), tok.decode(short_ids)],
                          max_new_tokens=8)
  assert out == expected and len(out[0]) == 8


def test_a_mesh_splits_each_batch_over_devices_and_gives_the_same_tokens(model, monkeypatch):
  from jax.sharding import NamedSharding, PartitionSpec
  from phi1 import sharding
  mesh = sharding.make_mesh("dp")
  assert sharding.batch_shards(mesh) == 8
  graphdef, params = nnx.split(model)
  on_mesh = nnx.merge(graphdef, jax.device_put(params, NamedSharding(mesh, PartitionSpec())))
  rows_per_device = []
  prefill = gen._prefill

  def recording(*args, **kwargs):
    state = prefill(*args, **kwargs)
    rows_per_device.append({s.data.shape[0] for s in state.tokens_BN.addressable_shards})
    return state

  monkeypatch.setattr(gen, "_prefill", recording)
  prompts = PROMPTS * 4  # 12 prompts: batch_size 5 becomes 8 (a multiple of the 8 shards)
  alone = gen.generate_tokens(model, prompts, max_new_tokens=12, batch_size=5)
  split = gen.generate_tokens(on_mesh, prompts, max_new_tokens=12, batch_size=5, mesh=mesh)
  assert split == alone
  assert rows_per_device == [{5}] * 3 + [{1}] * 2  # 3 unsplit batches, then 2 of B=8 over 8
  tok = CharTokenizer()
  text = [tok.decode(p) for p in prompts]
  full = gen.generate(model, tok, text, max_new_tokens=20, temperature=0.7, seed=1)
  stop = full[0][3:5]
  assert (gen.generate(on_mesh, tok, text, max_new_tokens=20, temperature=0.7, seed=1,
                       stop=[stop], mesh=mesh)
          == gen.generate(model, tok, text, max_new_tokens=20, temperature=0.7, seed=1, stop=[stop]))


def test_sample_keys_fix_a_prompts_draws_wherever_it_runs(model):
  keys, kw = [101, 202, 303], dict(max_new_tokens=10, temperature=3.0, seed=4)
  full = gen.generate_tokens(model, PROMPTS, sample_keys=keys, **kw)
  assert gen.generate_tokens(model, PROMPTS[1:], sample_keys=keys[1:], **kw) == full[1:]
  # By default the key is the position, which moved.
  assert gen.generate_tokens(model, PROMPTS[1:], **kw) != full[1:]
  with pytest.raises(ValueError, match="2 sample_keys for 3 prompts"):
    gen.generate_tokens(model, PROMPTS, sample_keys=keys[:2], **kw)
