"""Client-side rate limiting: token buckets for requests/min and tokens/min, plus a shared pause.

OpenAI enforces both an RPM and a TPM limit per organisation; staying under both avoids paying the
429 round trip. A 429's Retry-After applies to the whole organisation, so `pause(seconds)` stops every
coroutine (not just the one that got the 429) until it has passed.
"""

import asyncio
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


class RateLimiter:
  """Both buckets, optional (None = unlimited); `acquire` is fair enough: one waiter at a time."""

  def __init__(self, requests_per_min: float | None = None, tokens_per_min: float | None = None):
    self.requests = TokenBucket(requests_per_min) if requests_per_min else None
    self.tokens = TokenBucket(tokens_per_min) if tokens_per_min else None
    self._resume_at = 0.0
    self._lock = asyncio.Lock()

  def pause(self, seconds: float):
    """Hold every new request for `seconds` (a 429's Retry-After)."""
    self._resume_at = max(self._resume_at, time.monotonic() + seconds)

  async def acquire(self, tokens: int):
    if self.requests is None and self.tokens is None and self._resume_at <= time.monotonic():
      return  # fast path: nothing to wait for
    async with self._lock:
      while True:
        now = time.monotonic()
        wait = max(self._resume_at - now,
                   self.requests.wait_time(1, now) if self.requests else 0.0,
                   self.tokens.wait_time(tokens, now) if self.tokens else 0.0)
        if wait <= 0:
          break
        await asyncio.sleep(wait)
      if self.requests:
        self.requests.take(1)
      if self.tokens:
        self.tokens.take(tokens)

  def settle_tokens(self, estimated: int, actual: int):
    """Correct the token bucket once the real usage is known."""
    if self.tokens is None:
      return
    if actual < estimated:
      self.tokens.give_back(estimated - actual)
    else:
      self.tokens.take(actual - estimated)
