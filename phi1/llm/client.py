"""Async LLM client on the official `openai` client (any OpenAI-compatible URL), for corpus
generation (data_gen) and evaluation (phi1.evals).

    llm = LLM("gpt-3.5-turbo", cache="out/cache.sqlite", concurrency=64)
    completion = await llm.complete(Request(messages=[{"role": "user", "content": "..."}],
                                            params={"temperature": 1.0, "max_tokens": 1024}, seed=7))

What a run of millions of requests needs, in the order a request meets it:
  cache     content-addressed (model, messages, params, seed, revision salt): a hit costs nothing;
  budget    the worst case (prompt bytes + max_tokens) is reserved before sending, so the budget can
            never be exceeded, and settled to the real `usage` cost afterwards (phi1.llm.budget);
  limiter   token buckets for --rpm/--tpm and the server's own `x-ratelimit-*` windows, paused by a
            429's Retry-After (phi1.llm.ratelimit);
  semaphore bounded concurrency; each attempt goes out through the SDK's public raw-request
            path on its aiohttp transport, which builds the request and its headers
            (phi1.llm.transport);
  retries   exponential backoff with jitter on 429 / 408 / 409 / 5xx / timeouts / dropped
            connections / malformed bodies, honouring Retry-After(-ms); a quota, auth or unknown
            model error is fatal with the fix in one line, a per-request 400 raises RequestRejected
            (phi1.llm.errors);
  refusals  an answer with `refusal` set and no content is paid and counted, asked once more, and
            a second refusal is cached and raised as Refused (a rerun does not pay for it again);
  cache     the response is stored (group-committed, see phi1.llm.cache) before it is returned.
A chat request's answer cap goes out as `max_tokens` or `max_completion_tokens`
(`max_tokens_param`; by default chosen from the model family, phi1.llm.request).
The API key comes from the argument or OPENAI_API_KEY and is never logged or written anywhere.
"""

import asyncio
import json
import os
import random

import httpx2
import openai

from phi1.llm import transport
from phi1.llm.budget import Budget, RetryPolicy, Stats
from phi1.llm.cache import ResponseCache
from phi1.llm.errors import (BudgetExhausted, FatalAPIError, MalformedResponse, MissingAPIKey,
                             Refused, RequestRejected, RetriesExhausted, classify, retry_after_s,
                             server_answer)
from phi1.llm.pricing import Prices, prices_for
from phi1.llm.ratelimit import RateLimiter
from phi1.llm.request import (MAX_TOKENS_PARAMS, Completion, Request, cache_key, canonical_json,
                              identity, max_tokens_param_for, parse_response, request_body, sha256,
                              worst_case_tokens)

__all__ = ["LLM", "Budget", "RetryPolicy", "Stats", "Request", "Completion", "BudgetExhausted",
           "FatalAPIError", "MalformedResponse", "MissingAPIKey", "Refused", "RequestRejected",
           "RetriesExhausted", "cache_key", "canonical_json", "parse_response", "request_body",
           "sha256", "worst_case_tokens", "server_answer"]


class LLM:
  """See the module docstring. One instance per event loop; `await llm.aclose()` when done."""

  def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
               concurrency: int = 32, requests_per_min: float | None = None,
               tokens_per_min: float | None = None, cache: ResponseCache | str | None = None,
               revision: str = "v1", retry: RetryPolicy | None = None, timeout_s: float = 300.0,
               prices: Prices | None = None, budget: Budget | None = None,
               http: str | httpx2.AsyncClient = "aiohttp", pause_on_429: bool = True,
               max_tokens_param: str | None = None, client_options: dict | None = None):
    """`client_options` go to `openai.AsyncOpenAI` as they are: organization, project,
    default_headers, default_query (e.g. Azure's api-version)."""
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
      raise MissingAPIKey("OPENAI_API_KEY is not set. Export it before running (for a local "
                          "OpenAI-compatible server without auth, any non-empty value works).")
    if concurrency < 1:
      raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    self.max_tokens_param = max_tokens_param or max_tokens_param_for(model)
    if self.max_tokens_param not in MAX_TOKENS_PARAMS:
      raise ValueError(f"max_tokens_param must be one of {MAX_TOKENS_PARAMS}, got "
                       f"{self.max_tokens_param!r}")
    self.model = model
    self.concurrency = concurrency
    self.timeout_s = timeout_s
    self.revision = revision
    self.retry = retry or RetryPolicy()
    self.prices = prices or prices_for(model)
    if budget is not None and self.prices is None:
      raise ValueError(f"no price known for model {model!r}: give prices (--price-in/--price-out) "
                       "to use a budget")
    self.budget = budget
    self.cache = ResponseCache(cache) if isinstance(cache, str) else cache
    self.limiter = RateLimiter(requests_per_min, tokens_per_min)
    self.pause_on_429 = pause_on_429
    self.stats = Stats()
    self._semaphore = asyncio.Semaphore(concurrency)
    self._in_flight: dict[str, asyncio.Future] = {}
    self._http = transport.http_client(http, concurrency, timeout_s)
    # max_retries=0: retries are ours (we count them, share 429 pauses and respect the budget).
    self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                     timeout=timeout_s, http_client=self._http,
                                     **(client_options or {}))

  def body(self, request: Request) -> dict:
    """The JSON body sent for `request` (the Batch API's lines too)."""
    return request_body(self.model, request, self.max_tokens_param)

  def key(self, request: Request) -> str:
    return cache_key(self.body(request), self.revision)

  def cached(self, request: Request) -> Completion | None:
    """The cached answer, None on a miss; a cached refusal raises Refused."""
    if self.cache is None:
      return None
    key, request_hash = identity(self.body(request), self.revision)
    hit = self.cache.get(key)
    return None if hit is None else self._completion(hit, key, request_hash, cached=True)

  def _completion(self, r: dict, key: str, request_hash: str, cached: bool) -> Completion:
    if r.get("refusal") is not None:
      self.stats.rejected["refusal"] += 1
      raise Refused(r["refusal"])
    return Completion(text=r["text"], finish_reason=r["finish_reason"],
                      prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                      cost_usd=0.0 if cached else r["cost_usd"], cached=cached, key=key,
                      request_hash=request_hash, model=r.get("model") or self.model)

  def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
    return 0.0 if self.prices is None else self.prices.cost(prompt_tokens, completion_tokens,
                                                            batch=batch)

  def count_answer(self, response: dict):
    """Add one paid answer (its tokens and `cost_usd`) to the stats; the Batch API's too."""
    self.stats.requests += 1
    self.stats.prompt_tokens += response["prompt_tokens"]
    self.stats.completion_tokens += response["completion_tokens"]
    self.stats.cost_usd += response["cost_usd"]
    if response.get("refusal") is not None:
      self.stats.refusals += 1

  async def complete(self, request: Request) -> Completion:
    """The completion for `request`, from the cache or the endpoint (exactly one paid response,
    two when the first is a refusal). RequestRejected (Refused included) when it cannot have one."""
    body = self.body(request)
    key, request_hash = identity(body, self.revision)
    if self.cache is not None:
      hit = self.cache.get(key)
      if hit is not None:
        self.stats.cache_hits += 1
        return self._completion(hit, key, request_hash, cached=True)
    if key in self._in_flight:  # the same request already on its way: share its answer
      return await asyncio.shield(self._in_flight[key])
    future = asyncio.get_running_loop().create_future()
    self._in_flight[key] = future
    try:
      completion = await self._fetch(body, key, request_hash)
      future.set_result(completion)
      return completion
    except asyncio.CancelledError:
      future.cancel()
      raise
    except BaseException as e:
      if isinstance(e, RequestRejected) and not isinstance(e, Refused):
        self.stats.rejected[e.reason] += 1  # (refusals are counted where they are read)
      future.set_exception(e)
      future.exception()  # mark retrieved: nobody else may be waiting
      raise
    finally:
      del self._in_flight[key]

  async def _fetch(self, body: dict, key: str, request_hash: str) -> Completion:
    for _ in range(2):  # a refusal is asked once more; the second answer stands
      response = await self._paid_answer(body)
      if response["refusal"] is None:
        break
    if self.cache is not None:
      self.cache.put(key, self.model, response)
      if self.cache.pending == 1:  # commit this group even if no further answer arrives
        asyncio.get_running_loop().call_later(self.cache.commit_interval_s, self.cache.flush)
    return self._completion(response, key, request_hash, cached=False)

  async def _paid_answer(self, body: dict) -> dict:
    """One answer, its worst case reserved from the budget first and its real cost settled."""
    prompt_max, completion_max = worst_case_tokens(body)
    reserved = self.cost(prompt_max, completion_max)
    if self.budget is not None and not self.budget.try_reserve(reserved):
      raise self.budget.refusal("request", reserved)
    paid = 0.0  # stays 0 unless an answer arrived (failed requests are not billed)
    try:
      response = await self._send_with_retries(body, prompt_max + completion_max)
      # Without a `usage` field we cannot know the cost: assume the reserved worst case.
      paid = (self.cost(response["prompt_tokens"], response["completion_tokens"])
              if response["usage_reported"] else reserved)
      response["cost_usd"] = paid
      self.count_answer(response)
      return response
    finally:
      if self.budget is not None:
        self.budget.settle(reserved, paid)

  async def _send_with_retries(self, body: dict, token_estimate: int) -> dict:
    chat = "messages" in body
    path = "/chat/completions" if chat else "/completions"
    # Serialised once: every attempt sends the same bytes, whose hash is the request's identity.
    payload = json.dumps(body, ensure_ascii=False).encode()
    for attempt in range(self.retry.max_attempts):
      await self.limiter.acquire(token_estimate)
      wait_hint, answered = None, None
      try:
        async with self._semaphore:
          # One deadline for the whole attempt: socket timeouts alone miss a server that trickles.
          async with asyncio.timeout(self.timeout_s):
            raw = await transport.post(self.client, path, payload, retries_taken=attempt)
          answered = raw.headers
          status = raw.status_code
          if 200 <= status < 300:
            response = parse_response(raw.content, chat)
            self.limiter.settle_tokens(token_estimate,
                                       response["prompt_tokens"] + response["completion_tokens"])
            return response
        kind = classify(raw, self.client.api_key, self.model)  # raises when not retryable
        answer = f"HTTP {status}: {server_answer(raw, self.client.api_key)}"
        wait_hint = retry_after_s(raw)
        if status == 429 and self.pause_on_429:
          self.limiter.pause(min(wait_hint or self.retry.base_s, self.retry.max_retry_after_s))
      except transport.NoAnswer as e:
        kind, answer = e.kind, str(e)
      except TimeoutError:
        kind, answer = "timeout", f"timed out (no answer within {self.timeout_s} s)"
      except MalformedResponse as e:
        kind, answer = "malformed", str(e)
      finally:
        self.limiter.release(token_estimate, answered)
      self.stats.errors[kind] += 1
      if attempt + 1 == self.retry.max_attempts:
        break
      self.stats.retries += 1
      await asyncio.sleep(self._backoff(attempt, wait_hint))
    raise RetriesExhausted(f"{self.retry.max_attempts} attempts failed (last: {answer}); the "
                           "endpoint looks unavailable, rerun to resume")

  def _backoff(self, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
      return min(retry_after, self.retry.max_retry_after_s) * random.uniform(1.0, 1.1)
    ceiling = min(self.retry.max_s, self.retry.base_s * 2 ** attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"

  async def aclose(self):
    await self.client.close()  # closes self._http too
    if self.cache is not None:
      self.cache.close()

  async def __aenter__(self):
    return self

  async def __aexit__(self, *exc):
    await self.aclose()
