"""How an endpoint's refusals are told apart: retried (429 rate limit, 408/409, 5xx), fatal for the
job with one line naming the fix (key, billing, --model), or fatal for one request only (a 400 such
as context_length_exceeded, a model's refusal), which a job of many records skips and counts."""

import email.utils
import time


class MissingAPIKey(RuntimeError):
  pass


class FatalAPIError(RuntimeError):
  """The endpoint refused in a way retrying cannot fix (auth, quota, unknown model, bad request)."""


class RequestRejected(FatalAPIError):
  """This one request cannot succeed (400 context_length_exceeded, invalid_value, a refusal...);
  the endpoint is fine, so a job of many independent records skips it. `reason` is the count key."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


class Refused(RequestRejected):
  """The model answered with a refusal (chat `content` null, `refusal` set) twice: paid, cached."""

  def __init__(self, refusal: str):
    super().__init__(f"the model refused: {refusal[:200]}", "refusal")
    self.refusal = refusal


class RetriesExhausted(RuntimeError):
  pass


class BudgetExhausted(RuntimeError):
  """Sending this request could exceed the budget; nothing was sent."""


class MalformedResponse(ValueError):
  pass


RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx
# The paper's generators (phi-1 §2.2: GPT-3.5; §2.1: GPT-4 labels): the defaults for fidelity, but
# OpenAI retires models, so a 404 for them says how to choose another.
PAPER_MODELS = ("gpt-3.5-turbo", "gpt-4")
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")  # --max-tokens-param choices
_BILLING = "https://platform.openai.com/settings/organization/billing"


def error_fields(response) -> tuple[str, str, str | None]:
  """(code, type, param) of an OpenAI error body; empty strings when the body has none."""
  try:
    error = response.json()["error"]
    return str(error.get("code") or ""), str(error.get("type") or ""), error.get("param")
  except (ValueError, KeyError, TypeError, AttributeError):
    return "", "", None


def server_answer(response, api_key: str) -> str:
  """The error message in a response body (or its first 300 characters), minus the key."""
  try:
    detail = response.json()["error"]["message"]
  except (ValueError, KeyError, TypeError):
    detail = response.text
  return str(detail).replace(api_key, "[API key]")[:300]


def _paper_model(model: str) -> bool:
  return any(model == m or model.startswith(m + "-0") for m in PAPER_MODELS)


def classify(response, api_key: str, model: str) -> str:
  """The retry kind (`http_429`, `http_503`...) of a failed response, or raises FatalAPIError (the
  job cannot go on: the message names the fix) / RequestRejected (this request cannot succeed)."""
  status = response.status_code
  code, kind, param = error_fields(response)
  said = server_answer(response, api_key)
  if status == 429 and "insufficient_quota" in (code, kind):
    raise FatalAPIError(f"HTTP 429 insufficient_quota: the account behind OPENAI_API_KEY has no "
                        f"credit or quota left; add credit or raise its limit at {_BILLING}, then "
                        f"rerun (answers so far are cached) ({said})")
  if status in RETRYABLE_STATUS or status >= 500:
    return f"http_{status}"
  if status == 401:
    raise FatalAPIError(f"HTTP 401: authentication failed: check the key in OPENAI_API_KEY (and "
                        f"--base-url) ({said})")
  if status == 403:
    raise FatalAPIError(f"HTTP 403: permission denied for this key, model or region: check "
                        f"--model and the key's project ({said})")
  if status == 404:
    if code == "model_not_found" or "model" in said.lower():
      hint = f"model {model!r} is not available at this endpoint: choose another with --model"
      if _paper_model(model):
        hint += (f" ({model} is the paper's model, and OpenAI may have retired it; a current one "
                 "such as --model gpt-4.1-mini or gpt-4o-mini works: GET /v1/models lists the "
                 "models your key can use)")
    else:
      hint = "not found: check --base-url and --model"
    raise FatalAPIError(f"HTTP 404: {hint} ({said})")
  if code in ("unsupported_parameter", "unsupported_value") or param in MAX_TOKENS_PARAMS:
    other = "max_tokens" if param == "max_completion_tokens" else "max_completion_tokens"
    fix = (f"rerun with --max-tokens-param {other}" if param in MAX_TOKENS_PARAMS
           else "change the request settings")
    raise FatalAPIError(f"HTTP {status}: model {model!r} rejects parameter {param!r} on every "
                        f"request: {fix} ({said})")
  raise RequestRejected(f"HTTP {status} {code or kind or 'rejected'}: {said}",
                        code or f"http_{status}")



def retry_after_s(response) -> float | None:
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
