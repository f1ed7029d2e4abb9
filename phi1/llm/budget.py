"""What a run spends and may spend: the USD budget (reserved before sending, settled after) and
the counters every job prints (requests, cache hits, retries, refusals, rejected, tokens, cost)."""

import dataclasses
import time
from collections import Counter

from phi1.llm.errors import BudgetExhausted


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
  requests: int = 0          # HTTP attempts that got a usable response (refusals included)
  cache_hits: int = 0
  retries: int = 0
  refusals: int = 0          # answers that were a refusal (paid, counted in cost_usd)
  prompt_tokens: int = 0
  completion_tokens: int = 0
  cost_usd: float = 0.0
  errors: Counter = dataclasses.field(default_factory=Counter)   # retried failures by kind
  rejected: Counter = dataclasses.field(default_factory=Counter)  # not answerable, by reason
  started: float = dataclasses.field(default_factory=time.monotonic)

  def rates(self) -> dict:
    elapsed = max(time.monotonic() - self.started, 1e-9)
    return {"req/s": self.requests / elapsed,
            "tok/s": (self.prompt_tokens + self.completion_tokens) / elapsed}

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("started")
    d["errors"], d["rejected"] = dict(self.errors), dict(self.rejected)
    return d


@dataclasses.dataclass
class RetryPolicy:
  max_attempts: int = 8
  base_s: float = 1.0        # first backoff ceiling; doubles per attempt
  max_s: float = 60.0        # backoff ceiling
  max_retry_after_s: float = 600.0
