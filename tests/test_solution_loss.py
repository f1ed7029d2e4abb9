import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1.evals import solution_loss
from phi1.evals.task import Task
from phi1.model import Phi1, Phi1Config


class CharTokenizer:
  """One token per character (ids 1..127): makes the expected token layout obvious."""
  vocab_size = 128

  def encode(self, text):
    return [min(ord(c), 127) or 1 for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


TASKS = [Task("t/0", "def f(x):\n", "", "    return x + 1\n"),
         Task("t/1", "def g(a, b):\n    '''sum'''\n", "", "    return a + b\n"),
         Task("t/2", "x = ", "", "[i * i for i in range(10)]\n"),
         Task("t/3", "def long():\n" + "    pass\n" * 12, "", "    return 0\n")]


@pytest.fixture(scope="module")
def model():
  m = Phi1(Phi1Config.tiny(vocab_size=128, max_seq_len=256, d_model=64, n_heads=2, d_ff=128),
           rngs=nnx.Rngs(3))
  m.eval()
  return m


def direct_nll(model, task, tok):
  """Full logits of prompt + solution, log-softmax, summed over the solution's tokens only."""
  prompt, solution = tok.encode(task.prompt), tok.encode(task.reference)
  tokens = jnp.array([prompt + solution], jnp.int32)
  logp = jax.nn.log_softmax(model(tokens)[0], axis=-1)
  targets = np.array(prompt + solution)[1:]
  per_position = -np.asarray(logp[:-1])[np.arange(len(targets)), targets]
  return per_position[len(prompt) - 1:].sum(), len(solution)


def test_equals_direct_per_token_computation_on_solution_tokens_only(model):
  tok = CharTokenizer()
  result = solution_loss.SolutionLoss(TASKS, tok, max_len=256, batch_size=3)(model)
  expected = [direct_nll(model, t, tok) for t in TASKS]
  for t, (nll, n) in zip(TASKS, expected):
    assert result["per_task"][t.task_id]["tokens"] == n
    np.testing.assert_allclose(result["per_task"][t.task_id]["nll"], nll, rtol=2e-5)
  pooled = sum(e[0] for e in expected) / sum(e[1] for e in expected)
  np.testing.assert_allclose(result["solution_loss"], pooled, rtol=2e-5)
  # The prompt's own tokens are not scored: changing only the prompt's first (well-predicted or
  # not) tokens cannot add their loss. Scoring the prompt too would give a different number.
  prompt_too = sum(direct_nll(model, Task(t.task_id, t.prompt[:1], "", t.prompt[1:] + t.reference),
                              tok)[0] for t in TASKS)
  assert abs(prompt_too - sum(e[0] for e in expected)) > 1.0


def test_batched_equals_unbatched(model):
  tok = CharTokenizer()
  one = solution_loss.SolutionLoss(TASKS, tok, max_len=256, batch_size=1)(model)
  many = solution_loss.SolutionLoss(TASKS, tok, max_len=256, batch_size=4)(model)
  for t in TASKS:
    np.testing.assert_allclose(one["per_task"][t.task_id]["nll"],
                               many["per_task"][t.task_id]["nll"], rtol=1e-5)


def test_buckets_are_fixed_lengths_and_long_prompts_are_cut_from_the_left(model):
  tok = CharTokenizer()
  long_prompt = Task("t/long", "#" * 300 + "\ndef h():\n", "", "    return 1\n")
  scorer = solution_loss.SolutionLoss(TASKS + [long_prompt], tok, max_len=128, batch_size=2)
  lengths = {batch["tokens"].shape for _, batch in scorer.batches}
  assert lengths <= {(2, 64), (2, 128)}
  assert scorer.cut == {"prompts_cut_left": 2, "solutions_cut": 0}  # t/3 (133 tokens) too
  kept = scorer.encoded[-1]
  assert len(kept.tokens) == 128 and kept.tokens[-13:] == tuple(tok.encode("    return 1\n"))


def test_splits_from_a_decontamination_report(model, tmp_path):
  report = {"taus": {"0.9": {"split": {"humaneval": {"similar": ["t/0"],
                                                     "non_similar": ["t/1", "t/2", "t/3"]}}},
                     "0.8": {"split": {"humaneval": {"similar": ["t/0", "t/1"],
                                                     "non_similar": ["t/2", "t/3"]}}}}}
  path = tmp_path / "report.json"
  path.write_text(json.dumps(report))
  splits = solution_loss.decontamination_splits(str(path), "humaneval")
  assert splits == {"similar": {"t/0", "t/1"}, "non_similar": {"t/2", "t/3"}}  # loosest tau
  result = solution_loss.SolutionLoss(TASKS, CharTokenizer(), max_len=256)(model, splits)
  per = result["per_task"]
  similar = (per["t/0"]["nll"] + per["t/1"]["nll"]) / (per["t/0"]["tokens"] + per["t/1"]["tokens"])
  np.testing.assert_allclose(result["solution_loss_similar"], similar, rtol=1e-6)
  assert result["tasks_similar"] == 2 and result["tasks_non_similar"] == 2
  with pytest.raises(ValueError, match="no tau 0.5"):
    solution_loss.decontamination_splits(str(path), "humaneval", tau="0.5")
  with pytest.raises(ValueError, match="without mbpp"):
    solution_loss.decontamination_splits(str(path), "mbpp")
