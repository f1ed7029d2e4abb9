"""The generation loop shared by textbooks and exercises: slots -> LLM -> validation -> shards.

Slot i of a run is a deterministic function of (task seed, i): its constraints, its prompt, its
request seed, hence its cache key and its record id. A run walks slots 0, 1, 2, ... skipping those
whose record is already stored, and keeps at most `n - stored` requests in flight, so it stops at
exactly `n` records and never pays for a record it would not keep (a reject frees its place for the
next slot). Rerunning with the same arguments therefore tops up; a killed run's paid-but-unstored
answers come back from the cache for free.

A request the endpoint rejects on its own (400 context_length_exceeded, invalid_value...) or the
model refuses twice is skipped like a reject, its reason counted in `RunSummary.rejected`, and its
place goes to the next slot; the job stops only once more than `max_rejected_fraction` of `n` (and
at least `MIN_REJECTED_ALLOWED` requests) were rejected, which says the prompts or settings are
wrong rather than one record.
"""

import asyncio
import dataclasses
import errno
import sqlite3
import sys
import time
from collections import Counter
from typing import Protocol

from phi1.llm.client import (LLM, BudgetExhausted, Completion, FatalAPIError, Request,
                             RequestRejected, RetriesExhausted, canonical_json, sha256)
from data_gen.shards import ShardWriter


class Task(Protocol):
  kind: str  # "textbooks" | "exercises"

  def request(self, slot: int) -> tuple[Request, dict]:
    """The request for this slot and its constraint tuple."""

  async def check(self, completion: Completion, constraints: dict) -> dict | str:
    """Record fields the task adds (at least `text`) for a valid output, or a reject reason."""


@dataclasses.dataclass
class RunSummary:
  requested: int
  stored: int          # valid records in the directory now
  added: int           # records this run wrote
  rejects: dict
  invalid: dict        # outputs that failed validation but were kept (--keep-invalid), by reason
  stopped: str         # "done" | "budget" | "error: ..." | "disk full"
  llm: dict            # the LLM layer's stats (requests, cache hits, retries, tokens, cost)
  rejected: dict = dataclasses.field(default_factory=dict)  # requests skipped, by reason

  @property
  def ok(self) -> bool:
    return self.stopped == "done"


MAX_REJECTED_FRACTION = 0.01  # --max-rejected-fraction's default
MIN_REJECTED_ALLOWED = 10


def rejected_allowed(n: int, fraction: float) -> int:
  """How many rejected requests a job of `n` records tolerates before it stops."""
  return max(MIN_REJECTED_ALLOWED, int(fraction * n))


def record_id(kind: str, key: str, run: int = 0) -> str:
  """Run 0's ids are `kind-<key>`; a later run of the same directory (`--new-run`) tags its own."""
  return f"{kind}-{key[:24]}" if run == 0 else f"{kind}-r{run}-{key[:24]}"


def run_of(record_id_: str) -> int:
  tag = record_id_.split("-")[1]
  return int(tag[1:]) if tag.startswith("r") and tag[1:].isdigit() else 0


@dataclasses.dataclass(frozen=True)
class Slots:
  """The slots a rank owns under `--shard I/W`: I, I+W, I+2W, ... (W=1: every slot)."""
  rank: int = 0
  world: int = 1

  def __post_init__(self):
    if not 0 <= self.rank < self.world:
      raise ValueError(f"--shard {self.rank}/{self.world}: need 0 <= I < W")

  def __call__(self, j: int) -> int:
    return self.rank + j * self.world

  def share(self, n: int) -> int:
    """This rank's part of n records, so that the W parts add up to n."""
    return n // self.world + (1 if self.rank < n % self.world else 0)


class _Progress:
  """tqdm bar with requests/s, tokens/s, cost so far, cache hits, retries and rejects."""

  def __init__(self, total: int, initial: int, enabled: bool, llm: LLM, rejects: Counter):
    self.llm, self.rejects, self.last = llm, rejects, 0.0
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, unit="rec", file=sys.stderr, dynamic_ncols=True)

  def update(self, added: int = 0, force: bool = False):
    if self.bar is None:
      return
    self.bar.update(added)
    now = time.monotonic()
    if force or now - self.last > 0.5:
      self.last = now
      s = self.llm.stats
      rates = s.rates()
      self.bar.set_postfix_str(
          f"{rates['req/s']:.1f} req/s {rates['tok/s']:.0f} tok/s ${s.cost_usd:.4f} "
          f"hits {s.cache_hits} retries {s.retries} rejects {sum(self.rejects.values())}",
          refresh=False)

  def close(self):
    if self.bar is not None:
      self.update(force=True)
      self.bar.close()


async def _attempt(task: Task, llm: LLM, run: int, slot: int, request: Request, constraints: dict):
  completion = await llm.complete(request)
  fields = await task.check(completion, constraints)
  validity = {"valid": True}
  if isinstance(fields, str):
    if not getattr(task, "keep_invalid", False) or not completion.text.strip():
      return fields
    # --keep-invalid: phi-1 trained on GPT-3.5's output as it came, errors included.
    validity = {"valid": False, "invalid_reason": fields}
    fields = task.invalid_fields(completion, constraints)
  messages_or_prompt = request.messages if request.messages is not None else request.prompt
  return {
      "id": record_id(task.kind, completion.key, run),
      **fields,
      **validity,
      "run": run,
      "source": f"synthetic_{task.kind}",
      "constraints": constraints,
      "model": completion.model,
      "prompt_hash": sha256(canonical_json(messages_or_prompt)),
      "request_hash": completion.request_hash,
      "seed": request.seed,
      "slot": slot,
      "revision": llm.revision,
      "finish_reason": completion.finish_reason,
      "usage": {"prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "cost_usd": round(completion.cost_usd, 8), "cached": completion.cached},
  }


async def generate(task: Task, llm: LLM, writer: ShardWriter, n: int, *, window: int | None = None,
                   progress: bool = True, max_rejects: int | None = None, run: int = 0,
                   slots: Slots = Slots(),
                   max_rejected_fraction: float = MAX_REJECTED_FRACTION) -> RunSummary:
  """Fill `writer`'s directory up to `n` records of run `run` from the slots this rank owns.
  Stops cleanly on budget, fatal endpoint errors and a full disk (what was stored stays stored);
  the reason is in `RunSummary.stopped`."""
  window = window or 2 * llm.concurrency
  stored = {i for i in writer.ids if run_of(i) == run}
  start_count = len(stored)
  rejects: Counter = Counter()
  invalid: Counter = Counter()
  rejected: Counter = Counter()
  bar = _Progress(n, min(start_count, n), progress, llm, rejects)
  in_flight: dict[asyncio.Task, tuple] = {}
  stopped, slot = "done", 0
  # Slots refused by the budget while other requests held reservations: retried once those
  # settle (they usually cost far less than their worst case); only a refusal with nothing in
  # flight means the budget is really spent.
  budget_refused: list[tuple] = []
  # A prompt or validator that rejects nearly everything should stop the run, not spend forever.
  max_rejects = max_rejects if max_rejects is not None else 10 * n + 100

  def next_slot():
    nonlocal slot
    if budget_refused:
      return budget_refused.pop()
    while True:
      request, constraints = task.request(slots(slot))
      slot += 1
      if record_id(task.kind, llm.key(request), run) not in stored:
        return run, slots(slot - 1), request, constraints

  try:
    while True:
      while (stopped == "done" and not (budget_refused and in_flight) and len(in_flight) < window
             and len(stored) + len(in_flight) < n):
        if sum(rejects.values()) > max_rejects:
          stopped = f"error: more than {max_rejects} rejects {dict(rejects)}; check the prompts"
          break
        item = next_slot()
        in_flight[asyncio.ensure_future(_attempt(task, llm, *item))] = item
      if not in_flight:
        break
      done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
      for future in done:
        item = in_flight.pop(future)
        try:
          result = future.result()
        except BudgetExhausted:
          budget_refused.append(item)
          if not in_flight:
            stopped = "budget"
          continue
        except RequestRejected as e:  # this request only: its place goes to the next slot
          rejected[e.reason] += 1
          if sum(rejected.values()) > rejected_allowed(n, max_rejected_fraction):
            stopped = (f"error: {sum(rejected.values())} requests rejected {dict(rejected)}, more "
                       f"than --max-rejected-fraction {max_rejected_fraction} of {n} allows (last: "
                       f"{e})")
          continue
        except (FatalAPIError, RetriesExhausted) as e:
          stopped = f"error: {e}"
          continue
        except sqlite3.OperationalError as e:  # the cache could not be written (disk full?)
          stopped = f"error: response cache: {e}"
          continue
        if isinstance(result, str):
          rejects[result] += 1
        elif result["id"] in writer.ids:  # two slots drew the same request: keep one record
          rejects["duplicate_request"] += 1
        elif len(stored) < n and stopped in ("done", "budget"):
          try:
            writer.append(result)
            stored.add(result["id"])
            if not result["valid"]:
              invalid[result["invalid_reason"]] += 1
            bar.update(1)
          except OSError as e:
            if e.errno != errno.ENOSPC:
              raise
            stopped = "disk full"
      bar.update()
      # On a full disk (or a spent budget) requests in flight are let finish: they are paid for and
      # their answers reach the cache for the next run. After an endpoint error they are dropped.
      if stopped.startswith("error"):
        for future in in_flight:
          future.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        in_flight.clear()
  finally:
    for future in in_flight:
      future.cancel()
    bar.close()
  if stopped == "done" and len(stored) < n:
    stopped = "error: stopped early"
  return RunSummary(requested=n, stored=len(stored), added=len(stored) - start_count,
                    rejects=dict(rejects), invalid=dict(invalid), stopped=stopped,
                    llm=llm.stats.as_dict(), rejected=dict(rejected))
