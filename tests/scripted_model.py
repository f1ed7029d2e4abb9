"""A scripted model for evaluation tests: greedy decoding emits a given script, token by token.

`ScriptedPhi1` is a `Phi1` (same interface, config, LM head and checkpoint format) whose hidden
state at a position is the one-hot code of the token its script says comes next after (position,
token); its LM head is the identity (d_model == vocab_size). So greedy decoding through the real
tokenizer, KV-cache decoder, stop strings and EOS emits exactly the scripted completion, and what
the sandbox then scores is known in advance: pass@1 = 1 for the reference solutions, 0 for a wrong
script. The script is a JSON file named by $PHI1_SCRIPT ({"eos_id": ..., "pairs": [[prompt ids,
completion ids], ...]}); it becomes a parameter, so an exported checkpoint carries it.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phi1.model import Phi1, Phi1Config

SCRIPT_ENV = "PHI1_SCRIPT"
SHARPNESS = 30.0  # logit of the scripted token; every other token gets 0


def config(vocab_size: int = 512, max_seq_len: int = 512) -> Phi1Config:
  return Phi1Config.tiny(vocab_size=vocab_size, d_model=vocab_size, n_layers=1, n_heads=4,
                         d_ff=128, max_seq_len=max_seq_len)


def write_script(path, tokenizer, prompts, completions) -> str:
  pairs = [[tokenizer.encode(p), tokenizer.encode(c)] for p, c in zip(prompts, completions)]
  with open(path, "w") as f:
    json.dump({"eos_id": tokenizer.eos_id, "pairs": pairs}, f)
  return str(path)


def script_table(pairs, eos_id: int, max_seq_len: int, vocab_size: int) -> np.ndarray:
  """[position, token] -> the next token (-1: unscripted), from each prompt's last token on."""
  table = np.full((max_seq_len, vocab_size), -1, np.float32)
  for prompt_ids, completion_ids in pairs:
    ids = [*prompt_ids, *completion_ids, eos_id]
    for pos in range(len(prompt_ids) - 1, len(ids) - 1):
      if table[pos, ids[pos]] not in (-1, ids[pos + 1]):
        raise ValueError(f"two scripts disagree after token {ids[pos]} at position {pos}")
      table[pos, ids[pos]] = ids[pos + 1]
  return table


class ScriptedPhi1(Phi1):

  def __init__(self, config: Phi1Config, *, rngs: nnx.Rngs):
    if config.d_model != config.vocab_size:
      raise ValueError("ScriptedPhi1 needs d_model == vocab_size (its LM head is the identity)")
    super().__init__(config, rngs=rngs)
    table = np.full((config.max_seq_len, config.vocab_size), -1, np.float32)
    if os.environ.get(SCRIPT_ENV):
      with open(os.environ[SCRIPT_ENV]) as f:
        script = json.load(f)
      table = script_table(script["pairs"], script["eos_id"], config.max_seq_len,
                           config.vocab_size)
    self.script = nnx.Param(jnp.asarray(table), logical_axes=(None, "vocab"))
    self.lm_head.kernel[...] = jnp.eye(config.vocab_size, dtype=jnp.float32)
    self.lm_head.bias[...] = jnp.zeros(config.vocab_size, jnp.float32)

  def hidden_states(self, tokens_BT, segment_ids=None, positions=None, cache=None, *, rngs=None):
    self._check_inputs(tokens_BT, segment_ids, positions)
    B, T = tokens_BT.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions = jnp.clip(positions, 0, self.config.max_seq_len - 1)
    next_BT = self.script[...][positions, tokens_BT].astype(jnp.int32)
    h_BTD = jax.nn.one_hot(next_BT, self.config.vocab_size, dtype=jnp.float32) * SHARPNESS
    return h_BTD if cache is None else (h_BTD, cache)
