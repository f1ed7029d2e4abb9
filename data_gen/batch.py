"""The OpenAI Batch API as a generation backend (half price, results within the completion window).

Requests go out as JSONL files whose `custom_id` is the same cache key the online path uses, and
results land in the same cache; records are then built exactly as online, from cache hits. Each
submitted batch id is remembered in the cache database before anything else, so a killed run resumes
polling its batches instead of paying for them twice.
"""

import asyncio
import io
import json
import time

from phi1.llm.client import (LLM, BudgetExhausted, Request, cache_key, parse_response,
                             request_body, worst_case_tokens)
from data_gen.runner import RunSummary, Slots, generate, record_id, run_of
from data_gen.shards import ShardWriter

MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit per batch file
_TERMINAL = ("completed", "failed", "expired", "cancelled")


async def _wait_and_ingest(llm: LLM, batch_id: str, keys: list[str], poll_s: float) -> int:
  """Poll one batch to a terminal state and store its answers; returns how many were stored."""
  while True:
    batch = await llm.client.batches.retrieve(batch_id)
    if batch.status in _TERMINAL:
      break
    await asyncio.sleep(poll_s)
  stored = 0
  if batch.status in ("completed", "expired") and batch.output_file_id:  # expired: partial results
    content = await llm.client.files.content(batch.output_file_id)
    wanted = set(keys)
    for line in content.text.splitlines():
      if not line.strip():
        continue
      item = json.loads(line)
      response = item.get("response") or {}
      if item.get("custom_id") not in wanted or response.get("status_code") != 200:
        continue
      body = response["body"]
      chat = "message" in (body.get("choices") or [{}])[0]
      parsed = parse_response(json.dumps(body).encode(), chat)
      parsed["cost_usd"] = llm.cost(parsed["prompt_tokens"], parsed["completion_tokens"], batch=True)
      llm.stats.requests += 1
      llm.stats.prompt_tokens += parsed["prompt_tokens"]
      llm.stats.completion_tokens += parsed["completion_tokens"]
      llm.stats.cost_usd += parsed["cost_usd"]
      if llm.budget is not None:
        llm.budget.spent_usd += parsed["cost_usd"]
      llm.cache.put(item["custom_id"], llm.model, parsed)
      stored += 1
  llm.cache.set_batch_status(batch_id, batch.status)
  return stored


async def fill_cache(llm: LLM, requests: list[Request], *, poll_s: float = 30.0,
                     completion_window: str = "24h") -> int:
  """Get every request's answer into the cache through the Batch API; returns answers stored."""
  if llm.cache is None:
    raise ValueError("the batch backend needs a cache (results are delivered through it)")
  stored = 0
  for batch_id, keys in llm.cache.open_batches().items():  # a previous run's batches first
    stored += await _wait_and_ingest(llm, batch_id, keys, poll_s)
  bodies = {}
  for request in requests:
    body = request_body(llm.model, request)
    key = cache_key(body, llm.revision)
    if not llm.cache.contains(key):
      bodies[key] = body
  if not bodies:
    return stored
  chat = "messages" in next(iter(bodies.values()))
  endpoint = "/v1/chat/completions" if chat else "/v1/completions"
  items = list(bodies.items())
  submitted, reserved = [], 0.0
  for start in range(0, len(items), MAX_REQUESTS_PER_BATCH):
    chunk = items[start:start + MAX_REQUESTS_PER_BATCH]
    if llm.budget is not None:  # reserve the chunk's worst case, shrinking it to what fits
      fitting = []
      for key, body in chunk:
        worst = llm.cost(*worst_case_tokens(body), batch=True)
        if not llm.budget.try_reserve(worst):
          break
        fitting.append((key, body, worst))
      if not fitting:
        if not submitted:
          raise llm.budget.refusal("batch", worst)  # `worst`: the first request's, refused
        break
      reserved += sum(w for _, _, w in fitting)  # held until the results are in
      chunk = [(k, b) for k, b, _ in fitting]
    lines = "".join(json.dumps({"custom_id": key, "method": "POST", "url": endpoint, "body": body})
                    + "\n" for key, body in chunk)
    upload = await llm.client.files.create(
        file=(f"data_gen-{int(time.time())}.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = await llm.client.batches.create(input_file_id=upload.id, endpoint=endpoint,
                                            completion_window=completion_window)
    llm.cache.add_batch(batch.id, [k for k, _ in chunk])
    submitted.append((batch.id, [k for k, _ in chunk]))
  try:
    results = await asyncio.gather(*[_wait_and_ingest(llm, b, k, poll_s) for b, k in submitted])
  finally:
    if llm.budget is not None:
      llm.budget.reserved_usd -= reserved
  return stored + sum(results)


async def generate_with_batches(task, llm: LLM, writer: ShardWriter, n: int, *, poll_s: float = 30.0,
                                progress: bool = True, oversample: float = 1.1,
                                max_rounds: int = 20, run: int = 0,
                                slots: Slots = Slots()) -> RunSummary:
  """Rounds of: batch the next slots' requests (oversampled for rejects), then build records from
  the cache with the online loop (every answer is a hit, so it sends nothing it does not batch)."""
  rejects: dict = {}
  invalid: dict = {}

  def stored() -> int:
    return sum(1 for i in writer.ids if run_of(i) == run)

  start_count = stored()
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
      if record_id(task.kind, key, run) not in writer.ids and not llm.cache.contains(key):
        requests.append(request)
    try:
      filled = await fill_cache(llm, requests, poll_s=poll_s)
    except BudgetExhausted:
      break
    before = stored()
    summary = await generate(task, _CacheOnly(llm), writer, n, progress=progress, run=run,
                             slots=slots)
    for reason, count in summary.rejects.items():
      rejects[reason] = rejects.get(reason, 0) + count
    for reason, count in summary.invalid.items():
      invalid[reason] = invalid.get(reason, 0) + count
    if stored() == before and filled == 0:
      return RunSummary(n, stored(), stored() - start_count, rejects, invalid,
                        "error: batches returned no usable answers", llm.stats.as_dict())
  stopped = "done" if stored() >= n else ("budget" if llm.budget is not None else
                                          f"error: not done after {max_rounds} batch rounds")
  return RunSummary(n, stored(), stored() - start_count, rejects, invalid, stopped,
                    llm.stats.as_dict())


class _CacheOnly:
  """An LLM view that answers from the cache only; a miss ends the round (like a spent budget)."""

  def __init__(self, llm: LLM):
    self._llm = llm
    self.revision, self.stats, self.concurrency = llm.revision, llm.stats, llm.concurrency

  def key(self, request):
    return self._llm.key(request)

  async def complete(self, request):
    hit = self._llm.cached(request)
    if hit is None:
      raise BudgetExhausted("not answered by a batch yet")
    self._llm.stats.cache_hits += 1
    return hit
