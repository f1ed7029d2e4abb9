"""One attempt of a request through the `openai` client's public raw-request path, on its aiohttp
HTTP client.

`client.post(path, cast_to=httpx2.Response, content=...)` (the SDK's documented way to make a raw
request) lets the SDK build every request itself: URL and `default_query`, auth,
organisation/project, user agent, the `x-stainless-*` headers and the timeout. We pass
only the body, serialised once (its hash is the request's identity), and `x-stainless-retry-count`,
because the retries are ours (`max_retries=0` on the SDK: phi1.llm.client counts them, shares 429
pauses and respects the budget). The raw `httpx2.Response` gives the caller the status and the
`x-ratelimit-*` / `retry-after` headers; an error status comes back as a response (the SDK raises
`openai.APIStatusError` carrying it), a timeout or dropped connection raises NoAnswer.
The typed `chat.completions.with_raw_response.create` builds the same request but also transforms
the params through its typed layer: on a quiet 2-core machine bench/llm_throughput.py (50 ms
server, concurrency 64, steady state) measured it at 0.65-0.68 of the ideal rate and 1.1 ms of
client CPU per request, against 0.85-0.90 and 0.71-0.77 ms for this path (bench/RESULTS.md).
"""

import aiohttp
import httpx2
import openai


def http_client(http, concurrency: int, timeout_s: float) -> httpx2.AsyncClient:
  """The SDK's aiohttp client by default: at high concurrency httpx's connection pool scans every
  connection on each request and tops out near 560 requests/s on a 2-core machine against a 50 ms
  server (vs ~1,100 with aiohttp)."""
  limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  if isinstance(http, httpx2.AsyncClient):  # yours: proxies, custom TLS, a mock transport
    return http
  if http == "aiohttp":
    return openai.DefaultAioHttpClient(timeout=timeout_s, limits=limits)
  if http == "httpx":
    return openai.DefaultAsyncHttpxClient(timeout=timeout_s, limits=limits)
  raise ValueError(f"http must be 'aiohttp', 'httpx' or an httpx2.AsyncClient, got {http!r}")


class NoAnswer(Exception):
  """An attempt that got no HTTP answer; `kind` ("timeout" | "connection") is its retry count key."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def _caused_by_dropped_connection(error: BaseException) -> bool:
  """The SDK's aiohttp transport maps every aiohttp connection error, a dropped connection
  included, to httpx's ConnectTimeout (which the SDK wraps in APITimeoutError): look down the
  chain of causes for what it was."""
  while error is not None:
    if isinstance(error, aiohttp.ClientConnectionError) and not isinstance(error, TimeoutError):
      return True
    error = error.__cause__
  return False


async def post(client: openai.AsyncOpenAI, path: str, payload: bytes, retries_taken: int
               ) -> httpx2.Response:
  """POST the JSON `payload` to `path` once: the response whatever its status, or NoAnswer."""
  try:
    return await client.post(path, cast_to=httpx2.Response, content=payload,
                             options={"headers": {"x-stainless-retry-count": str(retries_taken)}})
  except openai.APIStatusError as e:
    return e.response
  except openai.APITimeoutError as e:
    if _caused_by_dropped_connection(e):
      raise NoAnswer("connection", f"connection failed ({e.__cause__})") from e
    raise NoAnswer("timeout", f"timed out ({e.__cause__ or e})") from e
  except openai.APIConnectionError as e:
    cause = e.__cause__ or e
    raise NoAnswer("connection", f"connection failed ({type(cause).__name__}: {cause})") from e
