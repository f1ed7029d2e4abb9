"""Benchmark-solution loss: the mean NLL per token of each problem's reference solution given its prompt.

At CPU scale pass@1 is 0 for every run, but how well a model predicts HumanEval's canonical
solutions is a continuous measure of the same ability, and it separates the data columns of paper
Figure 2.1 long before any sample passes.

    scorer = SolutionLoss(tasks, tokenizer, max_len=model.config.max_seq_len)
    result = scorer(model)           # {"solution_loss": nats/token, "tokens": ..., "per_task": ...}

Tokens are encode(prompt) + encode(solution): the model continues the prompt's tokens, as in
generation, and only the solution's tokens are scored. A prompt that does not fit is cut from the
left (3-shot MBPP's oldest example goes first); a solution longer than the context minus one token
is cut at its end; both counts are returned. Rows are right-padded (segment id 0, which nothing
attends to) to fixed length buckets, powers of two from 64 up to `max_len`, and run in batches of a
fixed size, so there is one compile per bucket used. The headline number pools every scored token
(sum of NLL / number of solution tokens); per-problem sums are kept so a subset (the "similar" /
"non-similar" split of decontamination, paper §5) is scored from the same pass.
"""

import dataclasses
import functools
import sys
from collections.abc import Callable, Collection, Sequence

import jax
import numpy as np
from flax import nnx

from phi1 import losses
from phi1.evals.task import Task
from phi1.model import DTYPES

MIN_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class EncodedTask:
  task_id: str
  tokens: tuple[int, ...]  # prompt tokens then solution tokens
  n_prompt: int            # how many of `tokens` are prompt (the rest are scored)


def bucket(n: int, max_len: int) -> int:
  return min(max_len, max(MIN_BUCKET, 1 << (n - 1).bit_length()))


def encode(tasks: Sequence[Task], tokenizer, max_len: int) -> tuple[list[EncodedTask], dict]:
  """(encoded tasks, {"prompts_cut_left": n, "solutions_cut": n})."""
  prompts = tokenizer.encode_batch([t.prompt for t in tasks])
  solutions = tokenizer.encode_batch([t.reference for t in tasks])
  encoded, cut = [], {"prompts_cut_left": 0, "solutions_cut": 0}
  for task, prompt, solution in zip(tasks, prompts, solutions):
    if not solution:
      raise ValueError(f"{task.task_id}: the reference solution is empty; nothing to score")
    if len(solution) > max_len - 1:  # at least one prompt token must condition the first target
      solution, cut["solutions_cut"] = solution[:max_len - 1], cut["solutions_cut"] + 1
    room = max_len - len(solution)
    if len(prompt) > room:
      prompt, cut["prompts_cut_left"] = prompt[len(prompt) - room:], cut["prompts_cut_left"] + 1
    if not prompt:  # an empty prompt: the first solution token has nothing to be predicted from
      raise ValueError(f"{task.task_id}: the prompt is empty; solution loss needs a prompt")
    encoded.append(EncodedTask(task.task_id, tuple(prompt) + tuple(solution), len(prompt)))
  return encoded, cut


def batches(encoded: Sequence[EncodedTask], max_len: int, batch_size: int):
  """Yields (row indices into `encoded`, {"tokens", "segment_ids", "targets", "weights"} [B, L])."""
  by_bucket: dict[int, list[int]] = {}
  for i, e in enumerate(encoded):
    by_bucket.setdefault(bucket(len(e.tokens), max_len), []).append(i)
  for length in sorted(by_bucket):
    members = by_bucket[length]
    for start in range(0, len(members), batch_size):
      rows = members[start:start + batch_size]
      tokens = np.zeros((batch_size, length), np.int32)
      segment_ids = np.zeros((batch_size, length), np.int32)
      weights = np.zeros((batch_size, length), np.float32)
      for r, i in enumerate(rows):
        e = encoded[i]
        n = len(e.tokens)
        tokens[r, :n] = e.tokens
        segment_ids[r, :n] = 1
        # Position p predicts token p + 1: the solution's tokens are targets at n_prompt-1 .. n-2.
        weights[r, e.n_prompt - 1:n - 1] = 1.0
      targets = np.concatenate([tokens[:, 1:], np.zeros((batch_size, 1), np.int32)], axis=1)
      yield rows, dict(tokens=tokens, segment_ids=segment_ids, targets=targets, weights=weights)


@functools.partial(jax.jit, static_argnums=0)
def row_nll(graphdef, params, batch):
  """Per-row sum of -log p(target) over the weighted positions, float32 [B]."""
  model = nnx.merge(graphdef, params)
  h_BTD = model.hidden_states(batch["tokens"], segment_ids=batch["segment_ids"])
  kernel, bias = model.lm_head.kernel[...], model.lm_head.bias[...]
  dtype = DTYPES[model.config.dtype]
  one_row = lambda h_TD, t_T, w_T: losses.lm_head_cross_entropy(
      h_TD[None], kernel, bias, t_T[None], w_T[None], dtype=dtype)
  return jax.vmap(one_row)(h_BTD, batch["targets"], batch["weights"])


class SolutionLoss:
  """Scores one benchmark's reference solutions; build once, call with each model/params."""

  def __init__(self, tasks: Sequence[Task], tokenizer, *, max_len: int, batch_size: int = 8):
    if not tasks:
      raise ValueError("solution loss needs at least one task")
    self.task_ids = [t.task_id for t in tasks]
    self.encoded, self.cut = encode(tasks, tokenizer, max_len)
    self.n_tokens = np.array([len(e.tokens) - e.n_prompt for e in self.encoded], np.float64)
    self.batches = list(batches(self.encoded, max_len, batch_size))

  def per_task_nll(self, graphdef, params, put: Callable = lambda batch: batch) -> np.ndarray:
    """Sum of NLL over each task's solution tokens, in task order. `put` places a numpy batch
    (e.g. replicated over a training mesh)."""
    nll = np.zeros(len(self.encoded), np.float64)
    for rows, batch in self.batches:
      sums = row_nll(graphdef, params, put(batch))
      if not sums.is_fully_addressable:  # rows split over hosts: every process gets them all
        from jax.experimental import multihost_utils
        sums = multihost_utils.process_allgather(sums, tiled=True)
      sums = np.asarray(sums)
      nll[rows] = sums[:len(rows)]
    return nll

  def summarize(self, nll: np.ndarray, splits: dict[str, Collection[str]] | None = None) -> dict:
    """{"solution_loss", "tokens", "tasks", per split "solution_loss_<name>"}: pooled nats/token."""
    result = dict(solution_loss=float(nll.sum() / self.n_tokens.sum()),
                  tokens=int(self.n_tokens.sum()), tasks=len(self.task_ids), **self.cut)
    for name, ids in (splits or {}).items():
      keep = np.array([t in ids for t in self.task_ids])
      result[f"solution_loss_{name}"] = (float(nll[keep].sum() / self.n_tokens[keep].sum())
                                         if keep.any() else None)
      result[f"tasks_{name}"] = int(keep.sum())
    return result

  def __call__(self, model, splits: dict[str, Collection[str]] | None = None) -> dict:
    model.eval()
    graphdef, params = nnx.split(model, nnx.Param)
    nll = self.per_task_nll(graphdef, params)
    result = self.summarize(nll, splits)
    result["per_task"] = {t: dict(nll=float(s), tokens=int(n))
                          for t, s, n in zip(self.task_ids, nll, self.n_tokens)}
    return result


def decontamination_splits(report_path: str, bench: str, tau: str | None = None
                           ) -> dict[str, set[str]]:
  """{"similar": ids, "non_similar": ids} from `python -m data_gen decontaminate`'s report.json:
  a problem is "similar" when a training record matched it at `tau` (default: the strictest
  match the report lists, i.e. the loosest tau)."""
  import json
  with open(report_path, encoding="utf-8") as f:
    report = json.load(f)
  taus = report.get("taus") or {}
  if not taus:
    raise ValueError(f"{report_path} is not a decontamination report (no 'taus')")
  tau = tau or min(taus, key=float)
  if tau not in taus:
    raise ValueError(f"{report_path} has no tau {tau}; it lists {sorted(taus)}")
  split = taus[tau]["split"].get(bench)
  if split is None:
    raise ValueError(f"{report_path} was made without {bench}; it covers {sorted(taus[tau]['split'])}")
  return {"similar": set(split["similar"]), "non_similar": set(split["non_similar"])}


def main(args, tasks: Sequence[Task], dataset: dict) -> int:
  """`phi1 eval --solution-loss`: prints the JSON summary; --out DIR gets solution_loss.json."""
  import json
  import os
  from phi1.checkpoint import load_for_inference
  try:
    splits = (decontamination_splits(args.decontamination_report, args.bench)
              if args.decontamination_report else None)
    step = {} if args.step is None else dict(step=args.step)
    model, tokenizer = load_for_inference(args.checkpoint, **step)
    scorer = SolutionLoss(tasks, tokenizer, max_len=model.config.max_seq_len,
                          batch_size=args.batch_size or 8)
  except (OSError, ValueError) as e:
    print(f"phi1 eval: {e}", file=sys.stderr)
    return 2
  result = scorer(model, splits)
  result["protocol"] = dict(dataset=dataset, checkpoint=os.path.abspath(args.checkpoint),
                            step=args.step,
                            metric="sum of NLL over reference-solution tokens / their number; "
                                   "tokens = encode(prompt) + encode(solution)",
                            decontamination_report=args.decontamination_report)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "solution_loss.json"), "w") as f:
      json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != "per_task"}))
  return 0
