"""Async LLM client on the official `openai` client (any OpenAI-compatible URL), for corpus
generation (data_gen) and evaluation (phi1.evals).

    llm = LLM("gpt-3.5-turbo", cache="out/cache.sqlite", concurrency=64)
    completion = await llm.complete(Request(messages=[{"role": "user", "content": "..."}],
                                            params={"temperature": 1.0, "max_tokens": 1024}, seed=7))

What a run of millions of requests needs, in the order a request meets it:
  cache     content-addressed (model, messages, params, seed, revision salt): a hit costs nothing;
  budget    the worst case (prompt bytes + max_tokens) is reserved before sending, so the budget can
            never be exceeded, and settled to the real `usage` cost afterwards;
  limiter   token buckets for requests/min and tokens/min, paused by a 429's Retry-After;
  semaphore bounded concurrency (the SDK's aiohttp transport: see `http`);
  retries   exponential backoff with jitter on 429 / 408 / 409 / 5xx / timeouts / dropped
            connections / malformed bodies, honouring Retry-After; other 4xx fail fast;
  cache     the response is stored (group-committed, see phi1.llm.cache) before it is returned.
Each endpoint's request is built once from the `openai` client's public attributes (URL, query,
auth, organisation/project, user agent and platform headers: see `LLM._endpoint`) and the client's
HTTP client sends every attempt; we skip only the SDK's per-request layer (option models, URL re-parsing, header merging, pydantic
responses), which costs ~0.5 ms of CPU per request and caps a 2-core machine far below 1,000
requests/s. Responses come back as raw bytes that `parse_response` checks itself.
The API key comes from the argument or OPENAI_API_KEY and is never logged or written anywhere.
"""

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import os
import random
import ssl
import time
from collections import Counter
from typing import Any

import aiohttp
import httpx2
import openai

from phi1.llm.cache import ResponseCache
from phi1.llm.pricing import Prices, prices_for
from phi1.llm.ratelimit import RateLimiter


class MissingAPIKey(RuntimeError):
  pass


class FatalAPIError(RuntimeError):
  """The endpoint refused in a way retrying cannot fix (auth, unknown model, bad request)."""


class RetriesExhausted(RuntimeError):
  pass


class BudgetExhausted(RuntimeError):
  """Sending this request could exceed the budget; nothing was sent."""


class MalformedResponse(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request. `messages` for /chat/completions, or `prompt` for /completions."""
  messages: tuple | list | None = None
  prompt: str | None = None
  params: dict = dataclasses.field(default_factory=dict)  # temperature, max_tokens, top_p, stop...
  seed: int | None = None

  def __post_init__(self):
    if (self.messages is None) == (self.prompt is None):
      raise ValueError("a Request needs exactly one of `messages` (chat) or `prompt` (completions)")


@dataclasses.dataclass
class Completion:
  text: str
  finish_reason: str | None
  prompt_tokens: int
  completion_tokens: int
  cost_usd: float
  cached: bool
  key: str            # cache key (includes the revision salt)
  request_hash: str   # sha256 of the canonical request body, as sent
  model: str          # the model the server says answered


@dataclasses.dataclass
class RetryPolicy:
  max_attempts: int = 8
  base_s: float = 1.0        # first backoff ceiling; doubles per attempt
  max_s: float = 60.0        # backoff ceiling
  max_retry_after_s: float = 600.0


@dataclasses.dataclass
class Budget:
  """USD limit. `spent + reserved <= limit_usd` always holds, so the limit is never crossed."""
  limit_usd: float
  spent_usd: float = 0.0
  reserved_usd: float = 0.0

  def try_reserve(self, usd: float) -> bool:
    if self.spent_usd + self.reserved_usd + usd > self.limit_usd:
      return False
    self.reserved_usd += usd
    return True

  def settle(self, reserved: float, actual: float):
    self.reserved_usd -= reserved
    self.spent_usd += actual

  def refusal(self, what: str, asked_usd: float) -> BudgetExhausted:
    """The error for a `what` ("request", "batch") that `try_reserve` refused at `asked_usd`."""
    return BudgetExhausted(f"budget ${self.limit_usd:.4g} cannot cover another {what} "
                           f"(spent ${self.spent_usd:.4g}, ${self.reserved_usd:.4g} held for "
                           f"requests in flight, this one may cost ${asked_usd:.4g})")


@dataclasses.dataclass
class Stats:
  requests: int = 0          # HTTP attempts that got a usable response
  cache_hits: int = 0
  retries: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0
  cost_usd: float = 0.0
  errors: Counter = dataclasses.field(default_factory=Counter)   # retried failures by kind
  started: float = dataclasses.field(default_factory=time.monotonic)

  def rates(self) -> dict:
    elapsed = max(time.monotonic() - self.started, 1e-9)
    return {"req/s": self.requests / elapsed,
            "tok/s": (self.prompt_tokens + self.completion_tokens) / elapsed}

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("started")
    d["errors"] = dict(self.errors)
    return d


def canonical_json(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def request_body(model: str, request: Request) -> dict:
  """The exact JSON body sent; its canonical hash is the request's identity (the fake server's too)."""
  body = {"model": model, **{k: v for k, v in request.params.items() if v is not None}}
  if request.messages is not None:
    body["messages"] = [dict(m) for m in request.messages]
  else:
    body["prompt"] = request.prompt
  if request.seed is not None:
    body["seed"] = request.seed
  return body


def cache_key(body: dict, revision: str) -> str:
  return _identity(body, revision)[0]


def _identity(body: dict, revision: str) -> tuple[str, str]:
  """(cache key, request hash) from one canonical serialisation."""
  canonical = canonical_json(body)
  return sha256(revision + "\x00" + canonical), sha256(canonical)


def worst_case_tokens(body: dict) -> tuple[int, int]:
  """Upper bounds on (prompt, completion) tokens: a byte-level BPE token is at least one byte, plus
  a few tokens of chat framing per message; the completion is capped by max_tokens."""
  if "messages" in body:
    prompt = sum(len(m.get("content", "").encode()) + 8 for m in body["messages"]) + 8
  else:
    prompt = len(body["prompt"].encode()) + 8
  completion = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
  return prompt, int(completion)


def parse_response(payload: bytes, chat: bool) -> dict:
  """Extract what we keep from a (chat) completion body; MalformedResponse on anything unexpected."""
  try:
    data = json.loads(payload)
    choice = data["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    usage = data.get("usage") or {}
    if not isinstance(text, str):
      raise TypeError(f"content is {type(text).__name__}")
    return {"text": text, "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "usage_reported": bool(usage), "model": data.get("model")}
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise MalformedResponse(f"unusable response body ({type(e).__name__}: {e})") from e


def retry_after_s(response: httpx2.Response | None) -> float | None:
  """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
  if response is None:
    return None
  headers = response.headers
  try:
    if "retry-after-ms" in headers:
      return float(headers["retry-after-ms"]) / 1000.0
    if "retry-after" in headers:
      value = headers["retry-after"]
      try:
        return float(value)
      except ValueError:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
  except (ValueError, TypeError):
    return None
  return None


_RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx


def _timeout_or_connection(error: BaseException) -> str:
  """The SDK's aiohttp transport maps every aiohttp connection error, a dropped connection
  included, to httpx's ConnectTimeout; count those as what they were."""
  cause = error.__cause__
  if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
    return "connection"
  return "timeout"


def _fatal_message(response: httpx2.Response, api_key: str) -> str:
  """What the endpoint said, minus the key: some servers and proxies echo it back."""
  status = response.status_code
  hint = {401: "authentication failed: check OPENAI_API_KEY",
          403: "permission denied for this key, model or region",
          404: "not found: check --model and --base-url"}.get(status, "request rejected")
  return f"HTTP {status}: {hint} ({server_answer(response, api_key)})"


def server_answer(response: httpx2.Response, api_key: str) -> str:
  """The error message in a response body (or its first 300 characters), minus the key."""
  try:
    detail = response.json()["error"]["message"]
  except (ValueError, KeyError, TypeError):
    detail = response.text
  return str(detail).replace(api_key, "[API key]")[:300]


class LLM:
  """See the module docstring. One instance per event loop; `await llm.aclose()` when done."""

  def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
               concurrency: int = 32, requests_per_min: float | None = None,
               tokens_per_min: float | None = None, cache: ResponseCache | str | None = None,
               revision: str = "v1", retry: RetryPolicy | None = None, timeout_s: float = 300.0,
               prices: Prices | None = None, budget: Budget | None = None,
               http: str | httpx2.AsyncClient = "aiohttp", pause_on_429: bool = True,
               client_options: dict | None = None):
    """`client_options` go to `openai.AsyncOpenAI` as they are: organization, project,
    default_headers, default_query (e.g. Azure's api-version)."""
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
      raise MissingAPIKey("OPENAI_API_KEY is not set. Export it before running (for a local "
                          "OpenAI-compatible server without auth, any non-empty value works).")
    if concurrency < 1:
      raise ValueError(f"concurrency must be >= 1, got {concurrency}")
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
    # The SDK's aiohttp client: at high concurrency httpx's connection pool scans every connection
    # on each request and tops out near 560 requests/s on a 2-core machine against a 50 ms
    # server (vs ~1,100 with aiohttp).
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if isinstance(http, httpx2.AsyncClient):  # yours: proxies, custom TLS, a mock transport
      self._http = http
    elif http == "aiohttp":
      self._http = openai.DefaultAioHttpClient(timeout=timeout_s, limits=limits)
    elif http == "httpx":
      self._http = openai.DefaultAsyncHttpxClient(timeout=timeout_s, limits=limits)
    else:
      raise ValueError(f"http must be 'aiohttp', 'httpx' or an httpx2.AsyncClient, got {http!r}")
    # max_retries=0: retries are ours (we count them, share 429 pauses and respect the budget).
    self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                     timeout=timeout_s, http_client=self._http,
                                     **(client_options or {}))
    self._endpoints: dict[str, tuple] = {}

  def _endpoint(self, path: str) -> tuple[httpx2.URL, httpx2.Headers, dict]:
    """(URL, headers, extensions) of a JSON POST to `path`, built once from the client's public
    attributes (`base_url`, `default_query`, `default_headers`, `auth_headers`, `timeout`) and
    its HTTP client's `build_request`.

    Everything the SDK puts on its own request is in it: base URL and `default_query`, the bearer
    token, organisation/project, user agent, platform and read-timeout headers, and the timeout
    extension; per attempt we add the body and the retry count, as the SDK does.
    `tests/test_llm.py` checks them against what `chat.completions.create` sends, so an SDK release
    that adds a header fails that test instead of silently diverging. Only static API-key auth is
    supported (a token provider's refresh happens in the SDK's per-request layer)."""
    endpoint = self._endpoints.get(path)
    if endpoint is None:
      client = self.client
      url = httpx2.URL(str(client.base_url).rstrip("/") + "/" + path.lstrip("/"))
      if client.default_query:
        url = url.copy_merge_params(dict(client.default_query))
      merged = {**client.auth_headers, **client.default_headers}
      headers = httpx2.Headers({k: v for k, v in merged.items() if isinstance(v, str)})
      timeout = client.timeout
      read_s = timeout.read if isinstance(timeout, httpx2.Timeout) else timeout
      if read_s is not None:
        headers["x-stainless-read-timeout"] = str(read_s)
      # The HTTP client's own defaults (accept-encoding, connection) merged in, as the SDK does.
      template = self._http.build_request("POST", url, headers=headers, content=b"")
      headers = httpx2.Headers([(k, v) for k, v in template.headers.multi_items()
                                if k.lower() != "content-length"])
      extensions = {"timeout": httpx2.Timeout(timeout).as_dict()}
      endpoint = self._endpoints[path] = (template.url, headers, extensions)
    return endpoint

  def key(self, request: Request) -> str:
    return cache_key(request_body(self.model, request), self.revision)

  def cached(self, request: Request) -> Completion | None:
    if self.cache is None:
      return None
    key, request_hash = _identity(request_body(self.model, request), self.revision)
    hit = self.cache.get(key)
    return None if hit is None else self._completion(hit, key, request_hash, cached=True)

  def _completion(self, r: dict, key: str, request_hash: str, cached: bool) -> Completion:
    return Completion(text=r["text"], finish_reason=r["finish_reason"],
                      prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                      cost_usd=0.0 if cached else r["cost_usd"], cached=cached, key=key,
                      request_hash=request_hash, model=r.get("model") or self.model)

  def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
    return 0.0 if self.prices is None else self.prices.cost(prompt_tokens, completion_tokens,
                                                            batch=batch)

  async def complete(self, request: Request) -> Completion:
    """The completion for `request`, from the cache or the endpoint (exactly one paid response)."""
    body = request_body(self.model, request)
    key, request_hash = _identity(body, self.revision)
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
      future.set_exception(e)
      future.exception()  # mark retrieved: nobody else may be waiting
      raise
    finally:
      del self._in_flight[key]

  async def _fetch(self, body: dict, key: str, request_hash: str) -> Completion:
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
      self.stats.prompt_tokens += response["prompt_tokens"]
      self.stats.completion_tokens += response["completion_tokens"]
      self.stats.cost_usd += paid
      if self.cache is not None:
        self.cache.put(key, self.model, response)
        if self.cache.pending == 1:  # commit this group even if no further answer arrives
          asyncio.get_running_loop().call_later(self.cache.commit_interval_s, self.cache.flush)
      return self._completion(response, key, request_hash, cached=False)
    finally:
      if self.budget is not None:
        self.budget.settle(reserved, paid)

  async def _send_with_retries(self, body: dict, token_estimate: int) -> dict:
    chat = "messages" in body
    url, headers, extensions = self._endpoint("/chat/completions" if chat else "/completions")
    # Serialised once: every attempt sends the same bytes, whose hash is the request's identity.
    payload = json.dumps(body, ensure_ascii=False).encode()
    for attempt in range(self.retry.max_attempts):
      await self.limiter.acquire(token_estimate)
      wait_hint = None
      request = httpx2.Request("POST", url, content=payload, extensions=extensions, headers=headers)
      request.headers["x-stainless-retry-count"] = str(attempt)  # headers were copied
      try:
        async with self._semaphore:
          # One deadline for the whole attempt: socket timeouts alone miss a server that trickles.
          async with asyncio.timeout(self.timeout_s):
            raw = await self._http.send(request)
          status = raw.status_code
          if 200 <= status < 300:
            response = parse_response(raw.content, chat)
            self.stats.requests += 1
            self.limiter.settle_tokens(token_estimate,
                                       response["prompt_tokens"] + response["completion_tokens"])
            return response
        if status not in _RETRYABLE_STATUS and status < 500:
          raise FatalAPIError(_fatal_message(raw, self.client.api_key))
        kind = f"http_{status}"
        answer = f"HTTP {status}: {server_answer(raw, self.client.api_key)}"
        wait_hint = retry_after_s(raw)
        if status == 429 and self.pause_on_429:
          self.limiter.pause(min(wait_hint or self.retry.base_s, self.retry.max_retry_after_s))
      except (httpx2.TimeoutException, TimeoutError) as e:
        kind = _timeout_or_connection(e)
        answer = f"{'connection failed' if kind == 'connection' else 'timed out'} ({e.__cause__ or e})"
      except (httpx2.RequestError, ssl.SSLError) as e:
        kind, answer = "connection", f"connection failed ({type(e).__name__}: {e})"
      except MalformedResponse as e:
        kind, answer = "malformed", str(e)
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
