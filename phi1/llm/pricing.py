"""Price table and cost accounting from the API's `usage` field.

Prices are USD per million tokens (input, output) as published by OpenAI at the time of writing; they
change, so `--price-in/--price-out` (or `Prices(...)` in Python) override them. Batch API requests
are billed at half price (OpenAI Batch API docs). Unknown models cost 0 unless priced explicitly,
and a budget on an unpriced model is an error (a budget nobody can enforce is worse than none).
"""

import dataclasses

# model prefix -> (USD per 1M input tokens, USD per 1M output tokens)
PRICE_TABLE = {
    "gpt-3.5-turbo": (0.50, 1.50),  # the paper's generator (GPT-3.5)
    "gpt-4": (30.00, 60.00),        # the paper's labeller (GPT-4)
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "gpt-5.1": (1.25, 10.00),
    "o1-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
}
BATCH_DISCOUNT = 0.5


@dataclasses.dataclass(frozen=True)
class Prices:
  """USD per million input / output tokens for one model."""
  input_per_mtok: float
  output_per_mtok: float

  def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
    usd = (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6
    return usd * (BATCH_DISCOUNT if batch else 1.0)


def prices_for(model: str) -> Prices | None:
  """The longest price-table prefix matching `model` (dated snapshots share their family's price)."""
  matches = [name for name in PRICE_TABLE if model == name or model.startswith(name + "-")]
  if not matches:
    return None
  return Prices(*PRICE_TABLE[max(matches, key=len)])
