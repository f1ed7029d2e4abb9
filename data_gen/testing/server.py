"""The fake OpenAI server's aiohttp application: completions with fault injection and a real rate
window, and the Batch API (files, batches, their terminal states and error files).

Faults on /v1/*completions (`faults`, each attempt with probability `fault_rate`; `first_faults`
on the first requests in arrival order, one each):
  "429"            rate limited, with `Retry-After` and `retry-after-ms` of `retry_after_s`
  "500"            a server error
  "slow"           the answer comes after `slow_s` (past a client timeout: looks like a hang)
  "drop"           the connection is closed without a response
  "malformed"      HTTP 200 with a body that is not valid JSON
  "truncated"      a valid answer cut in half with finish_reason "length" (counts as served)
  "refusal"        HTTP 200, `message.content` null and `message.refusal` set (billed, served)
  "context_length" HTTP 400 context_length_exceeded; that body is rejected every time after
  "invalid_value"  HTTP 400 invalid_value; sticky like context_length
  "401"            invalid API key;  "404" model_not_found;  "quota" 429 insufficient_quota
The rate window (`rpm`, `tpm` per `window_s`, fixed windows as OpenAI's headers describe them): every
answer carries `x-ratelimit-limit/remaining/reset-requests/-tokens`; a request past either limit gets
a 429 rate_limit_exceeded with `retry-after-ms` to the window's end (counted as "rate_limited").
Tokens are counted as OpenAI estimates them: prompt characters / 4 plus max_tokens.

Batches: `batch_outcomes` (consumed one per batch; default "completed") may be "failed" (the
batch's `errors` say why, no output), "cancelled" or "expired" (the first half of the lines
answered, the rest in the error file as batch_cancelled / batch_expired); `batch_line_faults`
(consumed one per line, in submission order) put a line in the error file with that HTTP error
("500", "429", "context_length", "invalid_value"); `max_batch_lines`, `max_file_bytes` and
`max_enqueued_tokens` are the API's limits (a batch past the enqueued limit fails with
token_limit_exceeded).
"""

import asyncio
import json
import math
import random
import time
from collections import Counter

from aiohttp import web

from data_gen.testing.answers import body_hash, default_answer

BATCH_OUTCOMES = ("completed", "failed", "cancelled", "expired")
RETRYABLE_FAULTS = ("429", "500", "slow", "drop", "malformed", "truncated")
FAULTS = RETRYABLE_FAULTS + ("refusal", "context_length", "invalid_value", "401", "404", "quota")
_CHARS_PER_TOKEN = 4
_ERRORS = {  # fault -> (status, type, code, param, message)
    "429": (429, "requests", "rate_limit_exceeded", None, "Rate limit reached (injected)"),
    "500": (500, "server_error", None, None, "The server had an error (injected)"),
    "context_length": (400, "invalid_request_error", "context_length_exceeded", "messages",
                       "This model's maximum context length is 8192 tokens (injected)"),
    "invalid_value": (400, "invalid_request_error", "invalid_value", "messages",
                      "Invalid value for 'messages' (injected)"),
    "401": (401, "invalid_request_error", "invalid_api_key", None,
            "Incorrect API key provided (injected)"),
    "404": (404, "invalid_request_error", "model_not_found", "model",
            "The model does not exist or you do not have access to it (injected)"),
    "quota": (429, "insufficient_quota", "insufficient_quota", None,
              "You exceeded your current quota, please check your plan and billing details."),
}
_STICKY = ("context_length", "invalid_value")  # a property of the request: rejected every time


def _error_body(fault: str, model: str = "") -> dict:
  status, kind, code, param, message = _ERRORS[fault]
  if fault == "404":
    message = f"The model `{model}` does not exist or you do not have access to it."
  return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def _duration(seconds: float) -> str:
  return f"{max(0, math.ceil(seconds * 1000))}ms"


def estimated_tokens(body: dict) -> int:
  prompt = json.dumps(body.get("messages") or body.get("prompt"))
  return len(prompt) // _CHARS_PER_TOKEN + int(body.get("max_tokens")
                                               or body.get("max_completion_tokens") or 0)


class RateWindow:
  """Fixed windows of `window_s` from the first request: at most `rpm` requests and `tpm` tokens."""

  def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0):
    self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
    self.start = None
    self.requests = self.tokens = 0

  def admit(self, tokens: int) -> tuple[bool, dict]:
    """(admitted, headers); an admitted request is counted."""
    now = time.monotonic()
    if self.start is None or now >= self.start + self.window_s:
      self.start = now if self.start is None else now - (now - self.start) % self.window_s
      self.requests = self.tokens = 0
    ok = ((self.rpm is None or self.requests + 1 <= self.rpm)
          and (self.tpm is None or self.tokens + tokens <= self.tpm))
    if ok:
      self.requests += 1
      self.tokens += tokens
    reset = _duration(self.start + self.window_s - now)
    headers = {}
    if self.rpm is not None:
      headers.update({"x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-reset-requests":
                      reset, "x-ratelimit-remaining-requests": str(self.rpm - self.requests)})
    if self.tpm is not None:
      headers.update({"x-ratelimit-limit-tokens": str(self.tpm), "x-ratelimit-reset-tokens": reset,
                      "x-ratelimit-remaining-tokens": str(self.tpm - self.tokens)})
    if not ok:
      headers["retry-after-ms"] = str(max(1, math.ceil((self.start + self.window_s - now) * 1000)))
    return ok, headers


class Server:
  """The aiohttp application and its counters; lives on one event loop (thread or process)."""

  def __init__(self, fault_rate=0.0, faults=RETRYABLE_FAULTS, latency_s=0.0, retry_after_s=0.05,
               slow_s=5.0, seed=0, responder=None, batch_delay_s=0.0, first_faults=(),
               rpm=None, tpm=None, window_s=60.0, batch_outcomes=(), batch_line_faults=(),
               max_batch_lines=50_000, max_file_bytes=200 * 1024 ** 2, max_enqueued_tokens=None):
    unknown = (set(faults) | set(first_faults)) - set(FAULTS)
    if unknown:
      raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    self.fault_rate, self.faults, self.latency_s = fault_rate, tuple(faults), latency_s
    self.retry_after_s, self.slow_s, self.batch_delay_s = retry_after_s, slow_s, batch_delay_s
    self.first_faults = list(first_faults)
    self.window = RateWindow(rpm, tpm, window_s) if (rpm or tpm) else None
    self.batch_outcomes, self.batch_line_faults = list(batch_outcomes), list(batch_line_faults)
    self.max_batch_lines, self.max_file_bytes = max_batch_lines, max_file_bytes
    self.max_enqueued_tokens = max_enqueued_tokens
    self.responder = responder
    self.rng = random.Random(seed)
    self.request_counts, self.served_counts, self.fault_counts = Counter(), Counter(), Counter()
    self.sticky: dict[str, str] = {}
    self.files: dict[str, bytes] = {}
    self.deleted_files = 0
    self.batches: dict[str, dict] = {}
    self.app = web.Application(client_max_size=512 * 1024 ** 2)
    self.app.router.add_post("/v1/chat/completions", self.completion)
    self.app.router.add_post("/v1/completions", self.completion)
    self.app.router.add_post("/v1/files", self.upload_file)
    self.app.router.add_get("/v1/files/{file_id}/content", self.file_content)
    self.app.router.add_delete("/v1/files/{file_id}", self.delete_file)
    self.app.router.add_post("/v1/batches", self.create_batch)
    self.app.router.add_get("/v1/batches/{batch_id}", self.get_batch)
    self.app.router.add_get("/v1/models", self.models)
    self.app.router.add_get("/_fake/stats", self.stats_handler)

  def stats(self) -> dict:
    return {"request_counts": dict(self.request_counts), "served_counts": dict(self.served_counts),
            "fault_counts": dict(self.fault_counts), "batches": len(self.batches),
            "batch_statuses": dict(Counter(b["status"] for b in self.batches.values())),
            "files": len(self.files), "deleted_files": self.deleted_files}

  async def models(self, request):
    return web.json_response({"object": "list", "data": [
        {"id": "fake", "object": "model", "created": 0, "owned_by": "data_gen.testing"}]})

  async def stats_handler(self, request):
    return web.json_response(self.stats())

  def answer(self, body: dict, chat: bool, key: str, refusal: bool = False) -> dict:
    text = self.responder(body) if self.responder else default_answer(body, key)
    finish = "stop"
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if refusal:
      text = "I'm sorry, but I can't help with that request."
    elif max_tokens and len(text) > max_tokens * _CHARS_PER_TOKEN:
      text, finish = text[:max_tokens * _CHARS_PER_TOKEN], "length"
    prompt = json.dumps(body.get("messages") or body.get("prompt"))
    usage = {"prompt_tokens": max(1, len(prompt) // _CHARS_PER_TOKEN),
             "completion_tokens": max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    digest = key[:24]
    if chat:
      message = {"role": "assistant", "content": None if refusal else text,
                 "refusal": text if refusal else None}
      choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
      return {"id": f"chatcmpl-{digest}", "object": "chat.completion", "created": int(time.time()),
              "model": body.get("model", "fake"), "choices": [choice], "usage": usage}
    return {"id": f"cmpl-{digest}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", "fake"), "usage": usage,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

  def _draw_fault(self, key: str) -> str | None:
    if key in self.sticky:
      return self.sticky[key]
    if self.first_faults:
      fault = self.first_faults.pop(0)
    elif self.faults and self.rng.random() < self.fault_rate:
      fault = self.rng.choice(self.faults)
    else:
      return None
    if fault in _STICKY:
      self.sticky[key] = fault
    return fault

  async def completion(self, request: web.Request):
    body = await request.json()
    key = body_hash(body)
    self.request_counts[key] += 1
    chat = request.path.endswith("/chat/completions")
    headers = {}
    if self.window is not None:
      admitted, headers = self.window.admit(estimated_tokens(body))
      if not admitted:
        self.fault_counts["rate_limited"] += 1
        return web.json_response(
            {"error": {"message": "Rate limit reached for requests", "type": "requests",
                       "code": "rate_limit_exceeded", "param": None}}, status=429, headers=headers)
    fault = self._draw_fault(key)
    if fault:
      self.fault_counts[fault] += 1
    if self.latency_s:
      await asyncio.sleep(self.latency_s)
    if fault == "429":
      headers.update({"Retry-After": str(max(1, math.ceil(self.retry_after_s))),
                      "retry-after-ms": str(int(self.retry_after_s * 1000))})
    if fault in _ERRORS:
      return web.json_response(_error_body(fault, body.get("model", "")),
                               status=_ERRORS[fault][0], headers=headers)
    if fault == "drop":
      request.transport.close()
      raise asyncio.CancelledError()
    if fault == "malformed":
      return web.Response(status=200, content_type="application/json", headers=headers,
                          text='{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
    if fault == "slow":
      await asyncio.sleep(self.slow_s)
    answer = self.answer(body, chat, key, refusal=fault == "refusal" and chat)
    if fault == "truncated":
      choice = answer["choices"][0]
      field = choice["message"] if chat else choice
      name = "content" if chat else "text"
      field[name] = field[name][:len(field[name]) // 2]
      choice["finish_reason"] = "length"
    if request.transport is None or request.transport.is_closing():
      return web.Response(status=499)  # the client gave up (timeout): nothing was served
    self.served_counts[key] += 1
    return web.json_response(answer, headers=headers)

  # The Batch API.
  def _new_file(self, content: bytes) -> str:
    file_id = f"file-{len(self.files) + self.deleted_files + 1:06d}"
    self.files[file_id] = content
    return file_id

  async def upload_file(self, request: web.Request):
    form = await request.post()
    upload = form["file"]
    content = upload.file.read()
    if len(content) > self.max_file_bytes:
      return web.json_response({"error": {
          "message": f"File too large: {len(content)} bytes, the limit is {self.max_file_bytes}",
          "type": "invalid_request_error", "code": "file_too_large"}}, status=400)
    file_id = self._new_file(content)
    return web.json_response({"id": file_id, "object": "file", "bytes": len(content),
                              "created_at": int(time.time()), "filename": upload.filename,
                              "purpose": form.get("purpose", "batch"), "status": "processed"})

  async def file_content(self, request: web.Request):
    file_id = request.match_info["file_id"]
    if file_id not in self.files:
      return web.json_response({"error": {"message": f"no file {file_id}"}}, status=404)
    return web.Response(body=self.files[file_id], content_type="application/octet-stream")

  async def delete_file(self, request: web.Request):
    file_id = request.match_info["file_id"]
    if self.files.pop(file_id, None) is None:
      return web.json_response({"error": {"message": f"no file {file_id}"}}, status=404)
    self.deleted_files += 1
    return web.json_response({"id": file_id, "object": "file", "deleted": True})

  def _line_result(self, item: dict) -> tuple[dict, bool]:
    """(output or error line, answered) for one batch input line."""
    body, custom_id = item["body"], item["custom_id"]
    key = body_hash(body)
    self.request_counts[key] += 1
    fault = self.sticky.get(key) or (self.batch_line_faults.pop(0) if self.batch_line_faults
                                     else None)
    if fault in _STICKY:
      self.sticky[key] = fault
    if fault:
      self.fault_counts[f"batch_{fault}"] += 1
      return {"id": f"batch_req_{key[:16]}", "custom_id": custom_id, "error": None,
              "response": {"status_code": _ERRORS[fault][0], "request_id": key[:16],
                           "body": _error_body(fault, body.get("model", ""))}}, False
    self.served_counts[key] += 1
    answer = self.answer(body, item["url"].endswith("/chat/completions"), key)
    return {"id": f"batch_req_{key[:16]}", "custom_id": custom_id, "error": None,
            "response": {"status_code": 200, "request_id": key[:16], "body": answer}}, True

  def _enqueued_tokens(self) -> int:
    return sum(b["tokens"] for b in self.batches.values() if b["status"] == "in_progress")

  async def create_batch(self, request: web.Request):
    spec = await request.json()
    lines = self.files.get(spec.get("input_file_id"))
    if lines is None:
      return web.json_response({"error": {"message": "unknown input_file_id"}}, status=400)
    items = [json.loads(line) for line in lines.decode().splitlines() if line.strip()]
    tokens = sum(estimated_tokens(item["body"]) for item in items)
    outcome = self.batch_outcomes.pop(0) if self.batch_outcomes else "completed"
    errors = None
    if len(items) > self.max_batch_lines:
      outcome, errors = "failed", {"code": "too_many_requests", "message":
                                   f"{len(items)} requests, the limit is {self.max_batch_lines}"}
    elif (self.max_enqueued_tokens is not None
          and self._enqueued_tokens() + tokens > self.max_enqueued_tokens):
      outcome, errors = "failed", {"code": "token_limit_exceeded", "message":
                                   "Enqueued token limit reached for this model (injected)"}
    elif outcome == "failed":
      errors = {"code": "invalid_request", "message": "The batch failed (injected)", "line": 1}
    outputs, failures = [], []
    if outcome != "failed":
      stop = len(items) if outcome == "completed" else (len(items) + 1) // 2
      for item in items[:stop]:
        line, answered = self._line_result(item)
        (outputs if answered else failures).append(line)
      for item in items[stop:]:
        failures.append({"id": None, "custom_id": item["custom_id"], "response": None,
                         "error": {"code": f"batch_{outcome}", "message":
                                   f"not executed: the batch was {outcome} (injected)"}})
    batch_id = f"batch_{len(self.batches) + 1:06d}"
    self.batches[batch_id] = {
        "id": batch_id, "object": "batch", "endpoint": spec.get("endpoint"),
        "input_file_id": spec["input_file_id"], "completion_window": spec.get("completion_window"),
        "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
        "error_file_id": None, "errors": None, "ready_at": time.monotonic() + self.batch_delay_s,
        "final": (outcome, errors, outputs, failures), "tokens": tokens,
        "request_counts": {"total": len(items), "completed": len(outputs),
                           "failed": len(failures)}}
    return web.json_response(self._public(self.batches[batch_id]))

  def _public(self, batch: dict) -> dict:
    if batch["status"] == "in_progress" and time.monotonic() >= batch["ready_at"]:
      outcome, errors, outputs, failures = batch.pop("final")
      batch["status"] = outcome
      if errors:
        batch["errors"] = {"object": "list", "data": [errors]}
      if outputs:
        batch["output_file_id"] = self._new_file(
            "".join(json.dumps(o) + "\n" for o in outputs).encode())
      if failures:
        batch["error_file_id"] = self._new_file(
            "".join(json.dumps(o) + "\n" for o in failures).encode())
    return {k: v for k, v in batch.items() if k not in ("ready_at", "final", "tokens")}

  async def get_batch(self, request: web.Request):
    batch = self.batches.get(request.match_info["batch_id"])
    if batch is None:
      return web.json_response({"error": {"message": "no such batch"}}, status=404)
    return web.json_response(self._public(batch))
