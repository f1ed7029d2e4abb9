"""What is asked and what comes back: the request, its exact JSON body and identity, worst-case
token bounds, and the parsed answer (text, or the model's refusal)."""

import dataclasses
import hashlib
import json
import re
from typing import Any

from phi1.llm.errors import MAX_TOKENS_PARAMS, MalformedResponse  # noqa: F401  (re-exported)


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


# o-series reasoning models and gpt-5 onwards reject `max_tokens` (the SDK marks it deprecated);
# older chat models and most OpenAI-compatible servers (vLLM, TGI) take it.
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5|gpt-[6-9])")


def max_tokens_param_for(model: str) -> str:
  """The chat parameter that caps the answer for `model`: `--max-tokens-param`'s default."""
  return "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(model) else "max_tokens"


def canonical_json(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def request_body(model: str, request: Request, max_tokens_param: str = "max_tokens") -> dict:
  """The exact JSON body sent; its canonical hash is the request's identity (the fake server's too).
  A chat request's `max_tokens` is sent under `max_tokens_param` (completions keep `max_tokens`)."""
  params = {k: v for k, v in request.params.items() if v is not None}
  if (request.messages is not None and max_tokens_param != "max_tokens"
      and "max_tokens" in params):
    params[max_tokens_param] = params.pop("max_tokens")
  body = {"model": model, **params}
  if request.messages is not None:
    body["messages"] = [dict(m) for m in request.messages]
  else:
    body["prompt"] = request.prompt
  if request.seed is not None:
    body["seed"] = request.seed
  return body


def identity(body: dict, revision: str) -> tuple[str, str]:
  """(cache key, request hash) from one canonical serialisation."""
  canonical = canonical_json(body)
  return sha256(revision + "\x00" + canonical), sha256(canonical)


def cache_key(body: dict, revision: str) -> str:
  return identity(body, revision)[0]


def worst_case_tokens(body: dict) -> tuple[int, int]:
  """Upper bounds on (prompt, completion) tokens: a byte-level BPE token is at least one byte, plus
  a few tokens of chat framing per message; the completion is capped by max_tokens."""
  if "messages" in body:
    prompt = sum(len(str(m.get("content", "")).encode()) + 8 for m in body["messages"]) + 8
  else:
    prompt = len(body["prompt"].encode()) + 8
  completion = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
  return prompt, int(completion)


def parse_response(payload: bytes, chat: bool) -> dict:
  """What we keep from a (chat) completion body; MalformedResponse on anything unexpected.
  A refusal (chat `content` null, `refusal` set) comes back with text None and `refusal` set."""
  try:
    data = json.loads(payload)
    choice = data["choices"][0]
    refusal = None
    if chat:
      text = choice["message"]["content"]
      if text is None and isinstance(choice["message"].get("refusal"), str):
        refusal = choice["message"]["refusal"]
    else:
      text = choice["text"]
    usage = data.get("usage") or {}
    if refusal is None and not isinstance(text, str):
      raise TypeError(f"content is {type(text).__name__}")
    return {"text": text, "refusal": refusal, "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "usage_reported": bool(usage), "model": data.get("model")}
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise MalformedResponse(f"unusable response body ({type(e).__name__}: {e})") from e
