"""Client-side rate limiting: token buckets for requests/min and tokens/min, plus a shared pause.

OpenAI enforces both an RPM and a TPM limit per organisation; staying under both avoids paying the
429 round trip. A 429's Retry-After applies to the whole organisation, so `pause(seconds)` stops every
coroutine (not just the one that got the 429) until it has passed.

The server's own view comes back on every answer: `x-ratelimit-remaining-requests/-tokens` and
`x-ratelimit-reset-requests/-tokens` (OpenAI's, as "1s", "6m0s", "20ms"). `observe(headers)` keeps
a `ServerWindow` per dimension: what is left (less what is in flight, which the server may not have
counted yet) until the reset; once spent, new requests wait for the reset, when the full
`x-ratelimit-limit-*` is assumed again. Until the first answer says whether the server sends these
headers, one request is sent at a time, so a limit below the concurrency is never overrun by the
opening burst.
"""

import asyncio
import re
import time


class TokenBucket:
  """`rate_per_min` units refill continuously; capacity is one minute's worth (OpenAI's window)."""

  def __init__(self, rate_per_min: float):
    if rate_per_min <= 0:
      raise ValueError(f"rate must be positive, got {rate_per_min}")
    self.capacity = float(rate_per_min)
    self.rate_per_s = rate_per_min / 60.0
    self.level = self.capacity
    self.updated = time.monotonic()

  def _refill(self, now: float):
    if now <= self.updated:
      return
    self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
    self.updated = now

  def wait_time(self, amount: float, now: float) -> float:
    """Seconds until `amount` is available (amounts above capacity wait for a full bucket)."""
    self._refill(now)
    amount = min(amount, self.capacity)
    return 0.0 if self.level >= amount else (amount - self.level) / self.rate_per_s

  def take(self, amount: float):
    self._refill(time.monotonic())
    self.level -= min(amount, self.capacity)

  def give_back(self, amount: float):
    self.level = min(self.capacity, self.level + amount)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration_s(value: str) -> float | None:
  """Seconds in an `x-ratelimit-reset-*` value: "1s", "6m0s", "1h2m3.5s", "20ms" or plain seconds."""
  value = value.strip()
  for suffix, scale in (("ms", 0.001), ("s", 1.0), ("", 1.0)):  # the common forms, without regex
    if value.endswith(suffix):
      try:
        return float(value[:len(value) - len(suffix)]) * scale
      except ValueError:
        pass
  parts = _DURATION_PART.findall(value)
  if not parts or "".join(n + u for n, u in parts) != value:
    return None
  return sum(float(n) * _UNIT_S[u] for n, u in parts)


class ServerWindow:
  """One dimension (requests or tokens) of the server's limit as its headers last described it."""

  def __init__(self):
    self.limit = self.remaining = None   # None: unknown, nothing to hold back
    self.reset_at = 0.0
    self.spent = 0.0                     # sent since the last observation

  def observe(self, limit: float | None, remaining: float, reset_s: float, in_flight: float,
              now: float):
    """Answers arrive out of order: one whose window ends before the one already seen is from an
    earlier window (its `remaining` is stale) and is ignored."""
    self.limit = limit if limit is not None else self.limit
    if now < self.reset_at < float("inf") and now + reset_s < self.reset_at - 0.25 * reset_s:
      return
    self.remaining = remaining - in_flight  # in flight: perhaps not counted by the server yet
    self.reset_at, self.spent = now + reset_s, 0.0

  def wait_time(self, amount: float, now: float, in_flight: float) -> float:
    if self.remaining is None:
      return 0.0
    if now >= self.reset_at:  # reset: the full limit again, less what may count in the new window
      if self.limit is None:
        self.remaining = None
        return 0.0
      self.remaining, self.spent, self.reset_at = self.limit - in_flight, 0.0, float("inf")
    if self.spent + amount <= self.remaining or self.spent == 0 and amount > (self.limit or 0):
      return 0.0  # fits (a request larger than the whole limit goes alone, for the server to judge)
    if self.reset_at != float("inf"):
      return self.reset_at - now
    # Spent with no reset announced yet: an answer in flight will tell (with none, go ahead).
    return 0.01 if in_flight > 0 else 0.0

  def take(self, amount: float):
    self.spent += amount


class RateLimiter:
  """Both buckets, optional (None = unlimited), and the server's windows from its headers;
  `acquire` is fair enough: one waiter at a time."""

  def __init__(self, requests_per_min: float | None = None, tokens_per_min: float | None = None):
    self.requests = TokenBucket(requests_per_min) if requests_per_min else None
    self.tokens = TokenBucket(tokens_per_min) if tokens_per_min else None
    self.server_requests, self.server_tokens = ServerWindow(), ServerWindow()
    self.headers_seen = None  # None: no answer yet; then whether the server sends limit headers
    self.in_flight_requests, self.in_flight_tokens = 0, 0.0
    self._resume_at = 0.0
    self._lock = asyncio.Lock()

  def pause(self, seconds: float):
    """Hold every new request for `seconds` (a 429's Retry-After)."""
    self._resume_at = max(self._resume_at, time.monotonic() + seconds)

  def _wait(self, tokens: int, now: float) -> float:
    if self.headers_seen is None and self.in_flight_requests:
      return 0.01  # the first answer will say whether the server announces its limits
    return max(self._resume_at - now,
               self.requests.wait_time(1, now) if self.requests else 0.0,
               self.tokens.wait_time(tokens, now) if self.tokens else 0.0,
               self.server_requests.wait_time(1, now, self.in_flight_requests)
               if self.headers_seen else 0.0,
               self.server_tokens.wait_time(tokens, now, self.in_flight_tokens)
               if self.headers_seen else 0.0)

  async def acquire(self, tokens: int):
    """Wait until a request estimated at `tokens` may go; pair with `release(tokens)`."""
    if (self.headers_seen is False and self.requests is None and self.tokens is None
        and self._resume_at <= time.monotonic()):
      self.in_flight_requests += 1
      self.in_flight_tokens += tokens
      return  # fast path: nothing to wait for
    async with self._lock:
      while True:
        wait = self._wait(tokens, time.monotonic())
        if wait <= 0:
          break
        await asyncio.sleep(wait)
      if self.requests:
        self.requests.take(1)
      if self.tokens:
        self.tokens.take(tokens)
      self.server_requests.take(1)
      self.server_tokens.take(tokens)
      self.in_flight_requests += 1
      self.in_flight_tokens += tokens

  def release(self, tokens: int, headers=None):
    """A request estimated at `tokens` is answered (or failed); `headers` are the answer's."""
    self.in_flight_requests -= 1
    self.in_flight_tokens -= tokens
    if headers is None:
      return
    # One pass over the raw pairs: each `get` on httpx's Headers decodes every header (~30 us).
    pairs = headers.raw if hasattr(headers, "raw") else [
        (k.encode(), v.encode()) for k, v in headers.items()]
    limits = {k.decode().lower(): v.decode() for k, v in pairs
              if k[:12].lower() == b"x-ratelimit-"}
    now = time.monotonic()
    seen = False
    for window, name, in_flight in ((self.server_requests, "requests", self.in_flight_requests),
                                    (self.server_tokens, "tokens", self.in_flight_tokens)):
      remaining = limits.get(f"x-ratelimit-remaining-{name}")
      reset = limits.get(f"x-ratelimit-reset-{name}")
      if remaining is None:
        continue
      try:
        limit = limits.get(f"x-ratelimit-limit-{name}")
        reset_s = parse_duration_s(reset) if reset is not None else None
        window.observe(float(limit) if limit is not None else None, float(remaining),
                       reset_s if reset_s is not None else 1.0, in_flight, now)
        seen = True
      except ValueError:
        continue
    if self.headers_seen is None or seen:
      self.headers_seen = seen

  def settle_tokens(self, estimated: int, actual: int):
    """Correct the token bucket once the real usage is known."""
    if self.tokens is None:
      return
    if actual < estimated:
      self.tokens.give_back(estimated - actual)
    else:
      self.tokens.take(actual - estimated)
