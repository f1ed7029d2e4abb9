"""One endpoint's HTTP request, built once from the `openai` client's public attributes.

The SDK's per-request layer (option models, URL re-parsing, header merging) costs ~0.22 ms of
CPU per request through its raw-request path `client.post(cast_to=httpx2.Response)` and ~0.56 ms
through the typed `chat.completions.with_raw_response.create` (against a mock transport; sending
a prebuilt request costs 0.05 ms). On this project's 2-core machine, quiet, bench/llm_throughput.py
(50 ms loopback server, concurrency 64, ideal 1,280 requests/s) measured the whole client on
`client.post` at 0.75-0.84 of ideal (median 0.797 over 11 runs, 685-860 us of client CPU per
request; uvloop did not help) against 0.85-0.88 (430-520 us) with the request built once, so the
0.8 target is kept only this way (bench/RESULTS.md). The URL, query and every header the SDK
would send are read once from its public attributes (`base_url`, `default_query`,
`auth_headers`, `default_headers`, `timeout`) and the HTTP client's `build_request`, and the
SDK's HTTP client sends every attempt.
`tests/test_llm.py` checks them against what `chat.completions.create` sends (and that
x-stainless-retry-count counts our retries), so an SDK release that adds a header fails that test
instead of silently diverging. Only static API-key auth is
supported (a token provider's refresh happens in the SDK's per-request layer).
"""

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


def endpoint(client: openai.AsyncOpenAI, http: httpx2.AsyncClient, path: str
             ) -> tuple[httpx2.URL, httpx2.Headers, dict]:
  """(URL, headers, extensions) of a JSON POST to `path`: base URL and `default_query`, the bearer
  token, organisation/project, user agent, platform and read-timeout headers, and the timeout
  extension. Per attempt the caller adds the body and the retry count, as the SDK does."""
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
  template = http.build_request("POST", url, headers=headers, content=b"")
  headers = httpx2.Headers([(k, v) for k, v in template.headers.multi_items()
                            if k.lower() != "content-length"])
  return template.url, headers, {"timeout": httpx2.Timeout(timeout).as_dict()}
