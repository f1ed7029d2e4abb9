"""The OpenAI Batch API as a generation backend (half price, results within the completion window).

Requests go out as JSONL files whose `custom_id` is the same cache key the online path uses, and
results land in the same cache; records are then built exactly as online, from cache hits. Each
submitted batch id is remembered in the cache database before anything else, so a killed run resumes
polling its batches instead of paying for them twice.

What comes back is accounted line by line:
- the output file's answers are stored and charged at the batch price, a `cancelled` or `expired`
  batch's partial output too (it is billed);
- the error file is downloaded and tallied by reason: a line that failed for a reason retrying can
  fix (5xx, 429, batch_expired, batch_cancelled, a line in neither file) is resubmitted, at most
  `max_rounds` times; one the endpoint rejected (400 context_length_exceeded...) is not, and its
  record is skipped and counted like an online rejection;
- a `failed` batch's `errors` are reported (token_limit_exceeded, the enqueued-token limit, is
  retried once the batches ahead of it finish).
Inputs are cut into chunks within the API's limits (50,000 lines and 200 MB per file) and at most
`window` batches are in flight: the next chunk goes when an earlier one finishes, so a large job
does not hit the enqueued-token limit at once. Every file uploaded or produced is deleted once its
batch is ingested.
"""

import asyncio
import dataclasses
import io
import json
import sys
import time
from collections import Counter

import openai

from phi1.llm.client import (LLM, BudgetExhausted, Request, RequestRejected, parse_response,
                             cache_key, worst_case_tokens)
from data_gen.runner import (MAX_REJECTED_FRACTION, RunSummary, Slots, generate, record_id,
                             rejected_allowed, run_of)
from data_gen.shards import ShardWriter

MAX_REQUESTS_PER_BATCH = 50_000          # the API's limit per batch input file
MAX_BATCH_FILE_BYTES = 200 * 1024 ** 2   # the API's limit per batch input file
_TERMINAL = ("completed", "failed", "expired", "cancelled")
# Line and batch failures that a later submission can fix.
_RETRYABLE = {"batch_expired", "batch_cancelled", "token_limit_exceeded", "missing",
              "rate_limit_exceeded", "server_error"}


def _retryable_status(status: int) -> bool:
  return status in (408, 409, 429) or status >= 500


@dataclasses.dataclass
class BatchTally:
  """What `fill_cache` got: answers stored, lines failed by reason, failed batches' errors."""
  stored: int = 0
  failed: Counter = dataclasses.field(default_factory=Counter)     # line failures, every round
  rejected: dict = dataclasses.field(default_factory=dict)         # key -> reason (not retried)
  batch_errors: list = dataclasses.field(default_factory=list)     # one line per failed batch
  retry: set = dataclasses.field(default_factory=set)              # keys to submit again
  rounds: int = 0


def chunks(lines: list[tuple[str, bytes]], max_lines: int, max_bytes: int) -> list[list]:
  """(key, JSONL line) pairs cut into files of at most `max_lines` lines and `max_bytes` bytes."""
  out, current, size = [], [], 0
  for key, line in lines:
    if len(line) > max_bytes:
      raise ValueError(f"one batch request is {len(line)} bytes, over the {max_bytes}-byte file "
                       "limit")
    if current and (len(current) == max_lines or size + len(line) > max_bytes):
      out.append(current)
      current, size = [], 0
    current.append((key, line))
    size += len(line)
  return out + ([current] if current else [])


def _line_failure(item: dict) -> tuple[str, bool]:
  """(reason, retryable) of an error-file line."""
  response = item.get("response")
  if response and response.get("status_code") not in (None, 200):
    status = response["status_code"]
    error = ((response.get("body") or {}).get("error") or {})
    reason = str(error.get("code") or error.get("type") or f"http_{status}")
    return reason, _retryable_status(status) and reason != "insufficient_quota"
  code = str((item.get("error") or {}).get("code") or "unknown")
  return code, code in _RETRYABLE


async def _download(llm: LLM, file_id: str | None) -> list[dict]:
  if not file_id:
    return []
  content = await llm.client.files.content(file_id)
  return [json.loads(line) for line in content.text.splitlines() if line.strip()]


async def _delete(llm: LLM, *file_ids):
  for file_id in file_ids:
    if file_id:
      try:
        await llm.client.files.delete(file_id)
      except openai.NotFoundError:
        pass  # already gone


def _store(llm: LLM, item: dict) -> None:
  body = item["response"]["body"]
  chat = "message" in (body.get("choices") or [{}])[0]
  parsed = parse_response(json.dumps(body).encode(), chat)
  parsed["cost_usd"] = llm.cost(parsed["prompt_tokens"], parsed["completion_tokens"], batch=True)
  llm.count_answer(parsed)
  if llm.budget is not None:
    llm.budget.spent_usd += parsed["cost_usd"]
  llm.cache.put(item["custom_id"], llm.model, parsed)


async def _wait_and_ingest(llm: LLM, batch_id: str, keys: list[str], poll_s: float,
                           tally: BatchTally, log) -> None:
  """Poll one batch to a terminal state, store its answers, tally the rest, delete its files."""
  while True:
    batch = await llm.client.batches.retrieve(batch_id)
    if batch.status in _TERMINAL:
      break
    await asyncio.sleep(poll_s)
  wanted, seen = set(keys), set()
  for item in await _download(llm, batch.output_file_id):  # partial when cancelled / expired
    key = item.get("custom_id")
    if key not in wanted or key in seen:
      continue
    seen.add(key)
    if (item.get("response") or {}).get("status_code") == 200:
      _store(llm, item)
      tally.stored += 1
    else:
      _tally_failure(tally, key, *_line_failure(item))
  for item in await _download(llm, batch.error_file_id):
    key = item.get("custom_id")
    if key in wanted and key not in seen:
      seen.add(key)
      _tally_failure(tally, key, *_line_failure(item))
  if batch.status == "failed":
    errors = [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
              for e in ((batch.errors.data or []) if batch.errors else [])]
    said = "; ".join(errors).replace(llm.client.api_key, "[API key]") or "no reason given"
    tally.batch_errors.append(f"batch {batch_id} failed: {said}")
    log(tally.batch_errors[-1])
    codes = {(e.code or "") for e in ((batch.errors.data or []) if batch.errors else [])}
    reason, retryable = (("token_limit_exceeded", True) if "token_limit_exceeded" in codes
                         else (f"batch_failed:{sorted(codes)[0] if codes else 'unknown'}", False))
  else:
    reason, retryable = "missing", True
  for key in wanted - seen:  # in neither file; a failed batch's lines are not the lines' fault
    _tally_failure(tally, key, reason, retryable, reject=batch.status != "failed")
  llm.cache.set_batch_status(batch_id, batch.status)
  await _delete(llm, batch.input_file_id, batch.output_file_id, batch.error_file_id)


def _tally_failure(tally: BatchTally, key: str, reason: str, retryable: bool, reject: bool = True):
  tally.failed[reason] += 1
  if retryable:
    tally.retry.add(key)
  elif reject:  # the endpoint rejected this request: its record is skipped, not asked again
    tally.rejected[key] = reason


async def _submit(llm: LLM, chunk: list, endpoint: str, completion_window: str) -> str:
  upload = await llm.client.files.create(
      file=(f"data_gen-{int(time.time())}.jsonl", io.BytesIO(b"".join(l for _, l in chunk))),
      purpose="batch")
  batch = await llm.client.batches.create(input_file_id=upload.id, endpoint=endpoint,
                                          completion_window=completion_window)
  llm.cache.add_batch(batch.id, [k for k, _ in chunk])
  return batch.id


def _stderr(line: str):
  print(line, file=sys.stderr, flush=True)


async def fill_cache(llm: LLM, requests: list[Request], *, poll_s: float = 30.0,
                     completion_window: str = "24h", max_lines: int = MAX_REQUESTS_PER_BATCH,
                     max_bytes: int = MAX_BATCH_FILE_BYTES, window: int = 4, max_rounds: int = 3,
                     log=_stderr) -> BatchTally:
  """Get every request's answer into the cache through the Batch API (see the module docstring)."""
  if llm.cache is None:
    raise ValueError("the batch backend needs a cache (results are delivered through it)")
  tally = BatchTally()
  open_batches = llm.cache.open_batches()  # a previous run's batches first
  await asyncio.gather(*[_wait_and_ingest(llm, b, k, poll_s, tally, log)
                         for b, k in open_batches.items()])
  bodies = {}
  for request in requests:
    body = llm.body(request)
    key = cache_key(body, llm.revision)
    if not llm.cache.contains(key) and key not in tally.rejected:
      bodies[key] = body
  if not bodies:
    return tally
  chat = "messages" in next(iter(bodies.values()))
  endpoint = "/v1/chat/completions" if chat else "/v1/completions"
  pending = list(bodies)
  for _ in range(max_rounds):
    if not pending:
      break
    tally.rounds += 1
    tally.retry.clear()
    lines = [(k, (json.dumps({"custom_id": k, "method": "POST", "url": endpoint,
                              "body": bodies[k]}) + "\n").encode()) for k in pending]
    await _run_round(llm, chunks(lines, max_lines, max_bytes), bodies, endpoint,
                     completion_window, poll_s, window, tally, log)
    pending = [k for k in pending if k in tally.retry and not llm.cache.contains(k)]
  return tally


async def _run_round(llm, todo: list, bodies: dict, endpoint: str, completion_window: str,
                     poll_s: float, window: int, tally: BatchTally, log):
  """Submit `todo`'s chunks with at most `window` batches in flight; each chunk's worst case is
  held from the budget (shrunk to what fits) until its batch is ingested."""
  running: dict[asyncio.Task, float] = {}
  submitted = 0
  try:
    while todo or running:
      while todo and len(running) < window:
        chunk, held = todo.pop(0), 0.0
        if llm.budget is not None:
          fitting = []
          for key, line in chunk:
            worst = llm.cost(*worst_case_tokens(bodies[key]), batch=True)
            if not llm.budget.try_reserve(worst):
              break
            fitting.append((key, line))
            held += worst
          if not fitting:
            todo.clear()
            if not running and not submitted:
              raise llm.budget.refusal("batch", worst)  # `worst`: the first request's, refused
            break
          chunk = fitting
        try:
          batch_id = await _submit(llm, chunk, endpoint, completion_window)
        except BaseException:
          if llm.budget is not None:
            llm.budget.reserved_usd -= held
          raise
        submitted += 1
        task = asyncio.ensure_future(_wait_and_ingest(llm, batch_id, [k for k, _ in chunk],
                                                      poll_s, tally, log))
        running[task] = held
      if not running:
        break
      done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
      for task in done:
        held = running.pop(task)
        if llm.budget is not None:
          llm.budget.reserved_usd -= held
        task.result()
  finally:
    for task, held in running.items():
      task.cancel()
      if llm.budget is not None:
        llm.budget.reserved_usd -= held


async def generate_with_batches(task, llm: LLM, writer: ShardWriter, n: int, *, poll_s: float = 30.0,
                                progress: bool = True, oversample: float = 1.1,
                                max_rounds: int = 20, run: int = 0, slots: Slots = Slots(),
                                max_rejected_fraction: float = MAX_REJECTED_FRACTION,
                                window: int = 4, log=_stderr, **fill_options) -> RunSummary:
  """Rounds of: batch the next slots' requests (oversampled for rejects), then build records from
  the cache with the online loop (every answer is a hit, so it sends nothing it does not batch).
  A request the endpoint rejected in a batch is skipped like an online rejection."""
  rejects: Counter = Counter()
  invalid: Counter = Counter()
  rejected: Counter = Counter()
  rejected_keys: dict[str, str] = {}
  batch_errors: list[str] = []

  def stored() -> int:
    return sum(1 for i in writer.ids if run_of(i) == run)

  start_count = stored()
  cache_only = _CacheOnly(llm, rejected_keys)
  for _ in range(max_rounds):
    if stored() >= n:
      break
    need = n - stored()
    requests, slot = [], 0
    # Walk from slot 0 each round: a slot whose batch line failed is batched again.
    while len(requests) < int(need * oversample) + 1:
      request, _ = task.request(slots(slot))
      slot += 1
      key = llm.key(request)
      if (record_id(task.kind, key, run) not in writer.ids and not llm.cache.contains(key)
          and key not in rejected_keys):
        requests.append(request)
    try:
      tally = await fill_cache(llm, requests, poll_s=poll_s, window=window, log=log,
                               **fill_options)
    except BudgetExhausted:
      break
    rejected_keys.update(tally.rejected)
    batch_errors += tally.batch_errors
    before = stored()
    summary = await generate(task, cache_only, writer, n, progress=progress, run=run, slots=slots,
                             max_rejected_fraction=max_rejected_fraction)
    rejects.update(summary.rejects)
    invalid.update(summary.invalid)
    rejected = Counter(rejected_keys[k] for k in cache_only.visited)  # each slot once
    if sum(rejected.values()) > rejected_allowed(n, max_rejected_fraction):
      return RunSummary(n, stored(), stored() - start_count, dict(rejects), dict(invalid),
                        f"error: {sum(rejected.values())} requests rejected {dict(rejected)}, more "
                        f"than --max-rejected-fraction {max_rejected_fraction} of {n} allows",
                        llm.stats.as_dict(), dict(rejected))
    if stored() == before and tally.stored == 0 and not tally.rejected:
      why = "; ".join(batch_errors[-3:]) or f"line failures {dict(tally.failed)}"
      return RunSummary(n, stored(), stored() - start_count, dict(rejects), dict(invalid),
                        f"error: batches returned no usable answers ({why})",
                        llm.stats.as_dict(), dict(rejected))
  stopped = "done" if stored() >= n else ("budget" if llm.budget is not None else
                                          f"error: not done after {max_rounds} batch rounds")
  return RunSummary(n, stored(), stored() - start_count, dict(rejects), dict(invalid), stopped,
                    llm.stats.as_dict(), dict(rejected))


class _CacheOnly:
  """An LLM view that answers from the cache only; a miss ends the round (like a spent budget),
  a request a batch rejected raises RequestRejected as the online path would."""

  def __init__(self, llm: LLM, rejected_keys: dict[str, str]):
    self._llm, self._rejected = llm, rejected_keys
    self.visited: set[str] = set()  # rejected keys the runner met (a later round meets them again)
    self.revision, self.stats, self.concurrency = llm.revision, llm.stats, llm.concurrency

  def key(self, request):
    return self._llm.key(request)

  async def complete(self, request):
    key = self._llm.key(request)
    if key in self._rejected:
      if key not in self.visited:
        self.visited.add(key)
        self._llm.stats.rejected[self._rejected[key]] += 1
      raise RequestRejected(f"rejected in a batch: {self._rejected[key]}", self._rejected[key])
    hit = self._llm.cached(request)
    if hit is None:
      raise BudgetExhausted("not answered by a batch yet")
    self._llm.stats.cache_hits += 1
    return hit
