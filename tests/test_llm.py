"""phi1.llm.client against the real loopback OpenAI-compatible server, through the real openai
client."""

import asyncio
import time

import httpx2
import openai
import pytest

from phi1.llm.client import (LLM, Budget, BudgetExhausted, FatalAPIError, MissingAPIKey, Refused,
                             Request, RequestRejected, RetriesExhausted, RetryPolicy)
from phi1.llm.pricing import Prices, prices_for
from phi1.llm.ratelimit import TokenBucket, parse_duration_s
from data_gen.testing import FakeOpenAI, body_hash

FAST_RETRY = RetryPolicy(max_attempts=12, base_s=0.005, max_s=0.02)


def _request(i: int, max_tokens: int = 400) -> Request:
  return Request(messages=[{"role": "user", "content": f"Write a function named `f_{i}`."}],
                 params={"temperature": 1.0, "max_tokens": max_tokens}, seed=i)


def _llm(server, tmp_path, **kwargs) -> LLM:
  kwargs.setdefault("retry", FAST_RETRY)
  kwargs.setdefault("timeout_s", 2.0)  # tests that need timeouts set their own
  return LLM("gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
             cache=str(tmp_path / "cache.sqlite"), **kwargs)


def test_missing_api_key_is_a_clear_error(monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  with pytest.raises(MissingAPIKey, match="OPENAI_API_KEY"):
    LLM("gpt-4o-mini", base_url="http://127.0.0.1:9/v1")


def test_faults_are_retried_and_each_request_is_paid_once(tmp_path):
  with FakeOpenAI(fault_rate=0.3, latency_s=0.002, slow_s=2.5, retry_after_s=0.01) as server:

    async def run():
      async with _llm(server, tmp_path, concurrency=16, timeout_s=1.5) as llm:
        out = await asyncio.gather(*[llm.complete(_request(i)) for i in range(200)])
        return out, llm.stats

    completions, stats = asyncio.run(run())
    served = server.served_counts
    faults = server.fault_counts
  assert len(completions) == 200 and all(c.text for c in completions)
  assert len(served) == 200
  # Every injected fault except "truncated" (a valid, paid answer) costs one retry; a loaded
  # machine may add genuine client timeouts, the only way an answer can be served twice.
  assert stats.retries == sum(stats.errors.values())
  assert stats.retries >= sum(faults.values()) - faults["truncated"] > 0
  late = stats.errors["timeout"] - faults["slow"]
  assert sum(served.values()) - 200 <= late
  assert set(stats.errors) <= {"http_429", "http_500", "timeout", "connection", "malformed"}
  assert stats.requests == 200
  truncated = [c for c in completions if c.finish_reason == "length"]
  assert len(truncated) == faults["truncated"]


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
def test_dropped_connections_are_counted_as_connection_errors(tmp_path, http):
  with FakeOpenAI(fault_rate=0.5, faults=("drop",)) as server:

    async def run():
      async with _llm(server, tmp_path, http=http) as llm:
        await asyncio.gather(*[llm.complete(_request(i)) for i in range(40)])
        return llm.stats

    stats = asyncio.run(run())
    drops = server.fault_counts["drop"]
  assert drops > 5 and dict(stats.errors) == {"connection": drops} and stats.retries == drops


def test_cache_answers_reruns_and_revision_salt_forces_new_requests(tmp_path):
  with FakeOpenAI() as server:

    async def run(revision):
      async with _llm(server, tmp_path, revision=revision) as llm:
        out = [await llm.complete(_request(i)) for i in range(5)]
        return out, llm.stats

    first, _ = asyncio.run(run("v1"))
    again, stats = asyncio.run(run("v1"))
    assert stats.cache_hits == 5 and stats.requests == 0
    assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
    assert sum(server.request_counts.values()) == 5
    _, stats = asyncio.run(run("v2"))
    assert stats.requests == 5 and sum(server.request_counts.values()) == 10


def test_request_hash_matches_the_body_the_server_received(tmp_path):
  with FakeOpenAI() as server:

    async def run():
      async with _llm(server, tmp_path) as llm:
        return await llm.complete(_request(3))

    completion = asyncio.run(run())
    assert server.served_counts == {completion.request_hash: 1}
  body = {"model": "gpt-4o-mini", "temperature": 1.0, "max_tokens": 400, "seed": 3,
          "messages": [{"role": "user", "content": "Write a function named `f_3`."}]}
  assert completion.request_hash == body_hash(body)


def _recording_http_client(status: int = 200, body: dict | None = None, failures: int = 0
                           ) -> tuple[list, httpx2.AsyncClient]:
  """An HTTP client that records every request and answers the first `failures` with HTTP 500."""
  seen = []

  def answer(request: httpx2.Request) -> httpx2.Response:
    seen.append(request)
    if len(seen) <= failures:
      return httpx2.Response(500, json={"error": {"message": "try again"}})
    return httpx2.Response(status, json=body or {
        "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}]})

  return seen, httpx2.AsyncClient(transport=httpx2.MockTransport(answer))


def test_requests_carry_the_sdks_headers_and_its_retry_count():
  """The SDK builds every attempt: the URL (with default_query) and every header (auth,
  organisation, project, custom defaults, user agent, platform, timeouts) are what
  `chat.completions.create` sends, and x-stainless-retry-count counts our retries."""
  options = dict(organization="org-1", project="proj-1", default_headers={"X-Team": "data"},
                 default_query={"api-version": "2024-10-21"})

  async def run():
    seen_sdk, http_sdk = _recording_http_client()
    sdk = openai.AsyncOpenAI(api_key="sk-test", base_url="http://example.test/v1", timeout=60.0,
                             max_retries=0, http_client=http_sdk, **options)
    await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    seen, http = _recording_http_client(failures=2)
    async with LLM("m", base_url="http://example.test/v1", api_key="sk-test", timeout_s=60.0,
                   http=http, client_options=options, retry=FAST_RETRY) as llm:
      completion = await llm.complete(Request(messages=[{"role": "user", "content": "x"}]))
    return seen_sdk, seen, completion, llm.stats

  seen_sdk, seen, completion, stats = asyncio.run(run())
  assert completion.text == "hi" and len(seen) == 3 and stats.retries == 2
  assert [r.headers["x-stainless-retry-count"] for r in seen] == ["0", "1", "2"]
  sdk = seen_sdk[0]
  unchanged = lambda r: {k: v for k, v in r.headers.items()
                         if k not in ("content-length", "x-stainless-retry-count")}
  for ours in seen:
    assert (ours.method, ours.url) == (sdk.method, sdk.url)
    assert unchanged(ours) == unchanged(sdk)
    assert ours.content == seen[0].content  # the same bytes on every attempt
    assert int(ours.headers["content-length"]) == len(ours.content)
  assert "api-version=2024-10-21" in str(seen[0].url)
  assert seen[0].headers["authorization"] == "Bearer sk-test"
  assert seen[0].headers["openai-organization"] == "org-1" and seen[0].headers["x-team"] == "data"


def test_an_echoed_api_key_never_reaches_the_error_message():
  key = "sk-proj-secret-0123456789"
  _, http = _recording_http_client(401, {"error": {"message": f"Incorrect API key: {key}"}})

  async def run():
    async with LLM("m", base_url="http://example.test/v1", api_key=key, http=http) as llm:
      await llm.complete(Request(messages=[{"role": "user", "content": "x"}]))

  with pytest.raises(FatalAPIError, match="authentication failed") as error:
    asyncio.run(run())
  assert key not in str(error.value) and "Incorrect API key: [API key]" in str(error.value)


def test_retry_after_is_honoured(tmp_path):
  with FakeOpenAI(fault_rate=1.0, faults=("429",), retry_after_s=0.2) as server:

    async def run():
      # A generous per-attempt timeout: under a loaded CI machine 0.5 s attempts can time out, and
      # this test is about Retry-After, not timeouts.
      async with _llm(server, tmp_path, retry=RetryPolicy(max_attempts=3, base_s=0.001, max_s=0.001),
                      pause_on_429=False, timeout_s=10.0) as llm:
        start = time.monotonic()
        with pytest.raises(RetriesExhausted):
          await llm.complete(_request(0))
        return time.monotonic() - start, llm.stats

    elapsed, stats = asyncio.run(run())
  assert stats.retries == 2 and stats.errors["http_429"] == 3, stats.errors
  assert elapsed >= 2 * 0.2  # two waits of Retry-After, not the 1 ms backoff


def test_non_retryable_status_fails_fast(tmp_path):
  with FakeOpenAI() as server:

    async def run():
      llm = LLM("gpt-4o-mini", base_url=server.base_url + "/no-such-prefix", api_key="sk-test",
                retry=FAST_RETRY)
      try:
        with pytest.raises(FatalAPIError, match="404"):
          await llm.complete(_request(0))
        return llm.stats
      finally:
        await llm.aclose()

    stats = asyncio.run(run())
  assert stats.retries == 0


def test_budget_is_never_exceeded(tmp_path):
  with FakeOpenAI() as server:

    async def run():
      budget = Budget(limit_usd=0.003)
      async with _llm(server, tmp_path, budget=budget, concurrency=8) as llm:
        results = await asyncio.gather(*[llm.complete(_request(i)) for i in range(100)],
                                       return_exceptions=True)
        return results, budget, llm.stats

    results, budget, stats = asyncio.run(run())
  done = [r for r in results if not isinstance(r, Exception)]
  refused = [r for r in results if isinstance(r, BudgetExhausted)]
  assert done and refused and len(done) + len(refused) == 100
  assert budget.spent_usd <= budget.limit_usd and budget.reserved_usd == pytest.approx(0.0)
  assert budget.spent_usd == pytest.approx(sum(c.cost_usd for c in done))
  assert stats.cost_usd == pytest.approx(
      prices_for("gpt-4o-mini").cost(stats.prompt_tokens, stats.completion_tokens))


def test_budget_needs_a_price(tmp_path):
  with pytest.raises(ValueError, match="no price"):
    LLM("my-local-model", api_key="x", budget=Budget(1.0))
  LLM("my-local-model", api_key="x", budget=Budget(1.0), prices=Prices(1.0, 2.0))


def test_prices_match_dated_snapshots_and_batch_is_half():
  assert prices_for("gpt-4o-mini-2024-07-18") == prices_for("gpt-4o-mini") != prices_for("gpt-4o")
  assert prices_for("llama-3-8b") is None
  p = Prices(1.0, 2.0)
  assert p.cost(1_000_000, 500_000) == pytest.approx(2.0)
  assert p.cost(1_000_000, 500_000, batch=True) == pytest.approx(1.0)


def test_token_bucket_waits_for_refill():
  bucket = TokenBucket(rate_per_min=120)  # 2 per second, one minute of burst
  now = time.monotonic()
  assert bucket.wait_time(120, now) == 0
  bucket.take(120)
  assert bucket.wait_time(1, now) == pytest.approx(0.5, rel=0.01)
  assert bucket.wait_time(1, now + 0.51) == 0.0
  assert bucket.wait_time(120, now + 60.5) == 0.0 and bucket.level == 120  # capped at capacity


def test_rate_limiter_spaces_requests(tmp_path):
  with FakeOpenAI() as server:

    async def run():
      # 600 requests/min = one per 0.1 s after the 600-request burst is spent.
      async with _llm(server, tmp_path, requests_per_min=600) as llm:
        llm.limiter.requests.take(600)
        start = time.monotonic()
        await asyncio.gather(*[llm.complete(_request(i)) for i in range(5)])
        return time.monotonic() - start

    assert asyncio.run(run()) >= 0.45


def test_fake_server_speaks_openai_for_other_clients():
  import openai
  with FakeOpenAI(responder=lambda body: "pass  # " + body["model"]) as server:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    chat = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}])
    text = client.completions.create(model="m2", prompt="def f():\n", max_tokens=2)
    assert chat.choices[0].message.content == "pass  # m1" and chat.usage.completion_tokens > 0
    assert text.choices[0].text == "pass  # " and text.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == ["fake"]
    assert sum(server.served_counts.values()) == 2


def test_server_rate_limit_headers_pace_requests_without_a_429(tmp_path):
  """A window of 6 requests per 0.3 s and concurrency 8: the first answer's headers say so, and the
  client waits for each reset instead of running into the window (today's code got 429s)."""
  with FakeOpenAI(rpm=6, window_s=0.3) as server:

    async def run():
      async with _llm(server, tmp_path, concurrency=8) as llm:
        start = time.monotonic()
        await asyncio.gather(*[llm.complete(_request(i)) for i in range(20)])
        return time.monotonic() - start, llm.stats

    elapsed, stats = asyncio.run(run())
    faults = server.fault_counts
  assert faults.get("rate_limited", 0) == 0 and stats.errors.get("http_429", 0) == 0
  assert stats.requests == 20 and elapsed >= 3 * 0.3  # 20 requests need 4 windows


def test_token_window_is_paced_too(tmp_path):
  with FakeOpenAI(tpm=2000, window_s=0.3) as server:  # ~4 requests of ~420 tokens per window

    async def run():
      async with _llm(server, tmp_path, concurrency=8) as llm:
        await asyncio.gather(*[llm.complete(_request(i)) for i in range(10)])
        return llm.stats

    stats = asyncio.run(run())
    assert server.fault_counts.get("rate_limited", 0) == 0 and stats.requests == 10


@pytest.mark.parametrize("fault,message", [
    ("quota", "billing"), ("401", "OPENAI_API_KEY"), ("404", "--model")])
def test_quota_auth_and_unknown_model_are_fatal_with_the_fix(tmp_path, fault, message):
  with FakeOpenAI(fault_rate=1.0, faults=(fault,)) as server:

    async def run():
      async with _llm(server, tmp_path) as llm:
        with pytest.raises(FatalAPIError, match=message) as error:
          await llm.complete(_request(0))
        return llm.stats, error.value

    stats, error = asyncio.run(run())
    assert sum(server.request_counts.values()) == 1  # not retried
  assert stats.retries == 0 and not isinstance(error, RequestRejected)
  assert "sk-test" not in str(error)


def test_a_404_for_the_papers_models_says_they_may_be_retired(tmp_path):
  with FakeOpenAI(fault_rate=1.0, faults=("404",)) as server:

    async def run():
      async with LLM("gpt-3.5-turbo", base_url=server.base_url, api_key="sk-test",
                     retry=FAST_RETRY) as llm:
        await llm.complete(_request(0))

    with pytest.raises(FatalAPIError, match="retired") as error:
      asyncio.run(run())
  assert "--model gpt-4.1-mini" in str(error.value) and "\n" not in str(error.value)


def test_a_refusal_is_paid_counted_and_asked_once_more(tmp_path):
  with FakeOpenAI(first_faults=["refusal"]) as server:

    async def run():
      async with _llm(server, tmp_path) as llm:
        return await llm.complete(_request(0)), llm.stats

    completion, stats = asyncio.run(run())
    assert sum(server.served_counts.values()) == 2
  assert completion.text and stats.refusals == 1 and stats.requests == 2 and stats.retries == 0
  # Both answers are billed: the refusal's tokens are in the cost.
  assert stats.cost_usd == pytest.approx(
      prices_for("gpt-4o-mini").cost(stats.prompt_tokens, stats.completion_tokens))
  assert stats.cost_usd > completion.cost_usd > 0


def test_a_second_refusal_is_raised_cached_and_not_paid_again(tmp_path):
  with FakeOpenAI(fault_rate=1.0, faults=("refusal",)) as server:

    async def run():
      async with _llm(server, tmp_path) as llm:
        with pytest.raises(Refused) as error:
          await llm.complete(_request(0))
        return llm.stats, error.value

    stats, error = asyncio.run(run())
    assert error.reason == "refusal" and "can't help" in str(error)
    assert stats.refusals == 2 and stats.requests == 2 and stats.cost_usd > 0
    assert stats.rejected == {"refusal": 1}
    again, _ = asyncio.run(run())  # from the cache: raised again, nothing sent
    assert again.requests == 0 and again.cache_hits == 1 and again.cost_usd == 0
    assert sum(server.request_counts.values()) == 2


@pytest.mark.parametrize("fault,reason", [("context_length", "context_length_exceeded"),
                                          ("invalid_value", "invalid_value")])
def test_a_per_request_400_rejects_that_request_only(tmp_path, fault, reason):
  with FakeOpenAI(first_faults=[fault]) as server:

    async def run():
      async with _llm(server, tmp_path) as llm:
        with pytest.raises(RequestRejected) as error:
          await llm.complete(_request(0))
        others = await asyncio.gather(*[llm.complete(_request(i)) for i in range(1, 4)])
        return error.value, others, llm.stats

    error, others, stats = asyncio.run(run())
    assert sum(server.request_counts.values()) == 4  # the rejected one was not retried
  assert error.reason == reason and len(others) == 3
  assert stats.rejected == {reason: 1} and stats.retries == 0


def test_a_parameter_the_model_rejects_is_fatal_naming_the_switch():
  _, http = _recording_http_client(400, {"error": {
      "message": "Unsupported parameter: 'max_tokens' is not supported with this model.",
      "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})

  async def run():
    async with LLM("m", base_url="http://example.test/v1", api_key="sk-x", http=http) as llm:
      await llm.complete(_request(0))

  with pytest.raises(FatalAPIError, match="--max-tokens-param max_completion_tokens") as error:
    asyncio.run(run())
  assert not isinstance(error.value, RequestRejected)


def test_max_tokens_param_follows_the_model_family_or_the_switch():
  request = _request(0, max_tokens=99)
  bodies = {model: LLM(model, api_key="x").body(request)
            for model in ("gpt-4o-mini", "gpt-3.5-turbo", "o3-mini", "o1", "gpt-5-mini")}
  assert bodies["gpt-4o-mini"]["max_tokens"] == bodies["gpt-3.5-turbo"]["max_tokens"] == 99
  for model in ("o3-mini", "o1", "gpt-5-mini"):
    assert bodies[model]["max_completion_tokens"] == 99 and "max_tokens" not in bodies[model]
  forced = LLM("gpt-4o-mini", api_key="x", max_tokens_param="max_completion_tokens")
  assert forced.body(request)["max_completion_tokens"] == 99
  completions = Request(prompt="def f():", params={"max_tokens": 5})
  assert LLM("o3-mini", api_key="x").body(completions)["max_tokens"] == 5
  with pytest.raises(ValueError, match="max_tokens_param"):
    LLM("m", api_key="x", max_tokens_param="max_new_tokens")
  assert all(prices_for(m) for m in ("o3-mini", "o1", "o4-mini", "gpt-5-mini", "gpt-4.1"))


def test_reset_durations_parse_as_openai_writes_them():
  assert parse_duration_s("1s") == 1.0 and parse_duration_s("20ms") == pytest.approx(0.02)
  assert parse_duration_s("6m0s") == 360.0 and parse_duration_s("1h2m3.5s") == 3723.5
  assert parse_duration_s("0.5") == 0.5 and parse_duration_s("soon") is None
