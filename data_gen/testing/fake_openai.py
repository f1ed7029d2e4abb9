"""A real OpenAI-compatible HTTP server on loopback, with fault injection, for tests and benches.

    from data_gen.testing import FakeOpenAI
    with FakeOpenAI(fault_rate=0.2, latency_s=0.05) as server:
      client = openai.OpenAI(base_url=server.base_url, api_key="test")
      ...
      server.served_counts   # Counter: body_hash(request body) -> successful responses
      server.request_counts  # Counter: body_hash(request body) -> all attempts (faulted too)
      server.fault_counts    # Counter: fault kind -> times injected

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, and the Batch API's
POST /v1/files, GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches/{id}. Any API key
and any model name are accepted.

Faults (each attempt is faulted with probability `fault_rate`, kind drawn uniformly from `faults`):
  "429"        HTTP 429 with `Retry-After` and `retry-after-ms` of `retry_after_s`
  "500"        HTTP 500
  "slow"       the answer comes after `slow_s` (past a client timeout: looks like a hang)
  "drop"       the connection is closed without a response
  "malformed"  HTTP 200 with a body that is not valid JSON
  "truncated"  a valid answer cut in half with finish_reason "length" (counts as served)

Canned answers are deterministic in the request body (same body, same text) and look like what the
prompt asks for: a chat prompt containing "function named `NAME`" gets one ```python block defining
NAME with type hints, a docstring and a body that runs; any other chat prompt gets a textbook-style
section (prose interleaved with ```python blocks that parse), except "List N distinct ..." which gets
N short lines (a topic-tree expansion); /v1/completions gets a function body.
`max_tokens` is honoured (token = 4 characters here): longer answers are cut, finish_reason "length".
Pass `responder=lambda body: "text"` to answer with your own text instead.

Runs in a background thread (default) or, with `subprocess=True`, in a child process (so a
benchmark's client does not share the GIL with the server); counters then come over HTTP.
"""

import asyncio
import hashlib
import json
import keyword
import math
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from typing import Callable

from aiohttp import web

FAULTS = ("429", "500", "slow", "drop", "malformed", "truncated")
_CHARS_PER_TOKEN = 4

_WORDS = """algorithm array index value loop iterate condition branch function argument return
variable list tuple dictionary set string character integer float boolean recursion base case stack
queue heap tree node edge graph path search sort merge partition pivot binary linear complexity time
space memory pointer reference mutable immutable scope closure generator iterator exception error
input output file line token parse compute count total sum product maximum minimum average element
key pair order sequence slice window prefix suffix pattern match replace split join format print
test assert example result invariant loop-body step update initialise accumulate compare swap insert
remove append extend length size capacity bound limit range interval overlap intersection union
difference subset frequency histogram table matrix row column grid neighbour distance cost weight
dynamic programming memo cache greedy choice optimal solution problem subproblem decompose combine
careful simple clear efficient correct readable idiomatic explicit small large empty single nested
each every first last next previous current final initial given expected actual unique duplicate
sorted reversed shifted rotated balanced valid invalid even odd positive negative zero prime digit""".split()


def body_hash(body: dict) -> str:
  """sha256 of the canonical JSON of a request body (sorted keys, compact separators, UTF-8)."""
  canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(canonical.encode()).hexdigest()


def _sentences(rng: random.Random, count: int, low: int, high: int) -> list[str]:
  """`count` sentences of low..high words. All words come from one `choices` call: text
  generation was most of the server's CPU, and at 1,000+ requests/s on a 2-core machine the
  server's time per request adds to every request's latency."""
  lengths = [low + int((high - low + 1) * rng.random()) for _ in range(count)]
  words = rng.choices(_WORDS, k=sum(lengths))
  sentences, start = [], 0
  for n in lengths:
    sentences.append(" ".join(words[start:start + n]).capitalize() + ".")
    start += n
  return sentences


_NAME_WORDS = [w.replace("-", "_") for w in _WORDS if not keyword.iskeyword(w)]


def _identifier(rng: random.Random) -> str:
  return "_".join(rng.choices(_NAME_WORDS, k=2))


_BODIES = [
    ("values: list[int], k: int = {k}", "int",
     "    total = 0\n    for index, value in enumerate(values):\n        if value % {k} == {r}:\n"
     "            total += value * index\n    return total\n"),
    ("text: str", "dict[str, int]",
     "    counts: dict[str, int] = {{}}\n    for {v} in text.split():\n"
     "        counts[{v}] = counts.get({v}, 0) + {k}\n    return counts\n"),
    ("items: list[str], width: int = {k}", "list[str]",
     "    result = []\n    for {v} in items:\n        if len({v}) <= width:\n"
     "            result.append({v}.upper())\n    return sorted(result)\n"),
    ("n: int", "int",
     "    if n <= {r}:\n        return n\n    {v}_a, {v}_b = 0, 1\n    for _ in range(n):\n"
     "        {v}_a, {v}_b = {v}_b, ({v}_a + {v}_b) % {m}\n    return {v}_a\n"),
    ("grid: list[list[int]]", "int",
     "    best = 0\n    for row in grid:\n        {v} = 0\n        for cell in row:\n"
     "            {v} = max(cell, {v} + cell)\n            best = max(best, {v})\n    return best\n"),
]


def exercise_text(name: str, rng: random.Random) -> str:
  params, returns, body = rng.choice(_BODIES)
  fill = dict(k=rng.randint(2, 9), r=rng.randint(0, 1), m=rng.choice([97, 1009, 10007]),
              v=_identifier(rng))
  doc = "\n    ".join(_sentences(rng, rng.randint(2, 4), 8, 14))
  code = (f"def {name}({params.format(**fill)}) -> {returns}:\n"
          f'    """{doc}\n    """\n' + body.format(**fill))
  return f"```python\n{code}```\n"


def textbook_text(topic: str, rng: random.Random) -> str:
  parts = [f"## {topic}\n"]
  for _ in range(rng.randint(2, 4)):
    parts.append(" ".join(_sentences(rng, rng.randint(3, 5), 9, 16)))
    name, arg, k = _identifier(rng), _identifier(rng), rng.randint(2, 9)
    parts.append(f"```python\ndef {name}({arg}):\n    return [x * {k} for x in {arg} if x % {k}]\n\n"
                 f"print({name}({[int(100 * rng.random()) for _ in range(4)]}))\n```")
  return "\n\n".join(parts) + "\n"


def default_answer(body: dict, key: str | None = None) -> str:
  """The canned answer for a request body; `key` is its body_hash when the caller has it."""
  rng = random.Random(key or body_hash(body))
  if "messages" not in body:  # /v1/completions: continue a function whose signature is given
    return f"    {_identifier(rng)} = {rng.randint(0, 9)}\n    return {_identifier(rng)!r}\n"
  prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
  match = re.search(r"function named `([A-Za-z_][A-Za-z0-9_]*)`", prompt)
  if match:
    return exercise_text(match.group(1), rng)
  match = re.search(r"List (\d+) distinct", prompt)
  if match:  # a topic-tree expansion: one short phrase per line
    return "\n".join(f"- {' '.join(rng.choices(_WORDS, k=rng.randint(2, 5)))}"
                     for _ in range(int(match.group(1)))) + "\n"
  topic = re.search(r'"([^"]{3,120})"', prompt)
  return textbook_text(topic.group(1) if topic else "Programming", rng)


class _Server:
  """The aiohttp application and its counters; lives on one event loop (thread or process)."""

  def __init__(self, fault_rate=0.0, faults=FAULTS, latency_s=0.0, retry_after_s=0.05, slow_s=5.0,
               seed=0, responder=None, batch_delay_s=0.0):
    unknown = set(faults) - set(FAULTS)
    if unknown:
      raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    self.fault_rate, self.faults, self.latency_s = fault_rate, tuple(faults), latency_s
    self.retry_after_s, self.slow_s, self.batch_delay_s = retry_after_s, slow_s, batch_delay_s
    self.responder = responder
    self.rng = random.Random(seed)
    self.request_counts, self.served_counts, self.fault_counts = Counter(), Counter(), Counter()
    self.files: dict[str, bytes] = {}
    self.batches: dict[str, dict] = {}
    self.app = web.Application(client_max_size=512 * 1024 ** 2)
    self.app.router.add_post("/v1/chat/completions", self.completion)
    self.app.router.add_post("/v1/completions", self.completion)
    self.app.router.add_post("/v1/files", self.upload_file)
    self.app.router.add_get("/v1/files/{file_id}/content", self.file_content)
    self.app.router.add_post("/v1/batches", self.create_batch)
    self.app.router.add_get("/v1/batches/{batch_id}", self.get_batch)
    self.app.router.add_get("/v1/models", self.models)
    self.app.router.add_get("/_fake/stats", self.stats_handler)

  def stats(self) -> dict:
    return {"request_counts": dict(self.request_counts), "served_counts": dict(self.served_counts),
            "fault_counts": dict(self.fault_counts), "batches": len(self.batches)}

  async def models(self, request):
    return web.json_response({"object": "list", "data": [
        {"id": "fake", "object": "model", "created": 0, "owned_by": "data_gen.testing"}]})

  async def stats_handler(self, request):
    return web.json_response(self.stats())

  def answer(self, body: dict, chat: bool, key: str) -> dict:
    text = self.responder(body) if self.responder else default_answer(body, key)
    finish = "stop"
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if max_tokens and len(text) > max_tokens * _CHARS_PER_TOKEN:
      text, finish = text[:max_tokens * _CHARS_PER_TOKEN], "length"
    prompt = json.dumps(body.get("messages") or body.get("prompt"))
    usage = {"prompt_tokens": max(1, len(prompt) // _CHARS_PER_TOKEN),
             "completion_tokens": max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    digest = key[:24]
    if chat:
      choice = {"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": finish, "logprobs": None}
      return {"id": f"chatcmpl-{digest}", "object": "chat.completion", "created": int(time.time()),
              "model": body.get("model", "fake"), "choices": [choice], "usage": usage}
    return {"id": f"cmpl-{digest}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", "fake"), "usage": usage,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

  async def completion(self, request: web.Request):
    body = await request.json()
    key = body_hash(body)
    self.request_counts[key] += 1
    chat = request.path.endswith("/chat/completions")
    fault = self.rng.choice(self.faults) if self.faults and self.rng.random() < self.fault_rate else None
    if fault:
      self.fault_counts[fault] += 1
    if self.latency_s:
      await asyncio.sleep(self.latency_s)
    if fault == "429":
      headers = {"Retry-After": str(max(1, math.ceil(self.retry_after_s))),
                 "retry-after-ms": str(int(self.retry_after_s * 1000))}
      return web.json_response({"error": {"message": "Rate limit reached (injected)",
                                          "type": "requests", "code": "rate_limit_exceeded"}},
                               status=429, headers=headers)
    if fault == "500":
      return web.json_response({"error": {"message": "The server had an error (injected)",
                                          "type": "server_error"}}, status=500)
    if fault == "drop":
      request.transport.close()
      raise asyncio.CancelledError()
    if fault == "malformed":
      return web.Response(status=200, content_type="application/json",
                          text='{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
    if fault == "slow":
      await asyncio.sleep(self.slow_s)
    answer = self.answer(body, chat, key)
    if fault == "truncated":
      choice = answer["choices"][0]
      if chat:
        choice["message"]["content"] = choice["message"]["content"][:len(choice["message"]["content"]) // 2]
      else:
        choice["text"] = choice["text"][:len(choice["text"]) // 2]
      choice["finish_reason"] = "length"
    if request.transport is None or request.transport.is_closing():
      return web.Response(status=499)  # the client gave up (timeout): nothing was served
    self.served_counts[key] += 1
    return web.json_response(answer)

  async def upload_file(self, request: web.Request):
    form = await request.post()
    upload = form["file"]
    content = upload.file.read()
    file_id = f"file-{len(self.files) + 1:06d}"
    self.files[file_id] = content
    return web.json_response({"id": file_id, "object": "file", "bytes": len(content),
                              "created_at": int(time.time()), "filename": upload.filename,
                              "purpose": form.get("purpose", "batch"), "status": "processed"})

  async def file_content(self, request: web.Request):
    file_id = request.match_info["file_id"]
    if file_id not in self.files:
      return web.json_response({"error": {"message": f"no file {file_id}"}}, status=404)
    return web.Response(body=self.files[file_id], content_type="application/octet-stream")

  async def create_batch(self, request: web.Request):
    spec = await request.json()
    lines = self.files.get(spec.get("input_file_id"))
    if lines is None:
      return web.json_response({"error": {"message": "unknown input_file_id"}}, status=400)
    outputs = []
    for line in lines.decode().splitlines():
      if not line.strip():
        continue
      item = json.loads(line)
      body = item["body"]
      key = body_hash(body)
      self.request_counts[key] += 1
      self.served_counts[key] += 1
      answer = self.answer(body, item["url"].endswith("/chat/completions"), key)
      outputs.append({"id": f"batch_req_{key[:16]}", "custom_id": item["custom_id"], "error": None,
                      "response": {"status_code": 200, "request_id": key[:16], "body": answer}})
    output_id = f"file-{len(self.files) + 1:06d}"
    self.files[output_id] = "".join(json.dumps(o) + "\n" for o in outputs).encode()
    batch_id = f"batch_{len(self.batches) + 1:06d}"
    self.batches[batch_id] = {
        "id": batch_id, "object": "batch", "endpoint": spec.get("endpoint"),
        "input_file_id": spec["input_file_id"], "completion_window": spec.get("completion_window"),
        "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
        "error_file_id": None, "ready_at": time.monotonic() + self.batch_delay_s,
        "result_file_id": output_id,
        "request_counts": {"total": len(outputs), "completed": len(outputs), "failed": 0}}
    return web.json_response(self._public(self.batches[batch_id]))

  def _public(self, batch: dict) -> dict:
    if batch["status"] == "in_progress" and time.monotonic() >= batch["ready_at"]:
      batch["status"], batch["output_file_id"] = "completed", batch["result_file_id"]
    return {k: v for k, v in batch.items() if k not in ("ready_at", "result_file_id")}

  async def get_batch(self, request: web.Request):
    batch = self.batches.get(request.match_info["batch_id"])
    if batch is None:
      return web.json_response({"error": {"message": "no such batch"}}, status=404)
    return web.json_response(self._public(batch))


async def _serve(server: _Server, sock: socket.socket) -> web.AppRunner:
  runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
  await runner.setup()
  await web.SockSite(runner, sock).start()
  return runner


def _serve_forever(kwargs: dict):
  """The child process of `subprocess=True`: prints its port, then serves until terminated."""
  try:
    import uvloop
    uvloop.install()
  except ImportError:
    pass
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  sock.listen(1024)
  loop = asyncio.new_event_loop()
  loop.run_until_complete(_serve(_Server(**kwargs), sock))
  print(sock.getsockname()[1], flush=True)
  loop.run_forever()


class FakeOpenAI:
  """See the module docstring."""

  def __init__(self, *, fault_rate: float = 0.0, faults=FAULTS, latency_s: float = 0.0,
               retry_after_s: float = 0.05, slow_s: float = 5.0, seed: int = 0,
               responder: Callable[[dict], str] | None = None, batch_delay_s: float = 0.0,
               subprocess: bool = False):
    if not 0.0 <= fault_rate <= 1.0:
      raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
    if subprocess and responder is not None:
      raise ValueError("a custom responder needs the in-thread server (subprocess=False)")
    self._kwargs = dict(fault_rate=fault_rate, faults=faults, latency_s=latency_s,
                        retry_after_s=retry_after_s, slow_s=slow_s, seed=seed,
                        responder=responder, batch_delay_s=batch_delay_s)
    self._subprocess = subprocess
    self._server: _Server | None = None
    self._loop = self._thread = self._process = None
    self.base_url = None

  def start(self) -> "FakeOpenAI":
    if self._subprocess:  # a plain child process: no multiprocessing re-import of __main__
      kwargs = {k: v for k, v in self._kwargs.items() if k != "responder"}
      self._process = subprocess.Popen(
          [sys.executable, "-c", "import sys, json; from data_gen.testing.fake_openai import "
           "_serve_forever; _serve_forever(json.loads(sys.argv[1]))", json.dumps(kwargs)],
          stdout=subprocess.PIPE, text=True)
      port = self._process.stdout.readline().strip()
      if not port.isdigit():
        self._process.kill()
        raise RuntimeError("fake OpenAI server process did not start")
      self.base_url = f"http://127.0.0.1:{port}/v1"
      return self
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    self._server = _Server(**self._kwargs)
    self._loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
      asyncio.set_event_loop(self._loop)
      self._runner = self._loop.run_until_complete(_serve(self._server, sock))
      started.set()
      self._loop.run_forever()

    self._thread = threading.Thread(target=run, name="FakeOpenAI", daemon=True)
    self._thread.start()
    started.wait(30)
    return self

  def stop(self):
    if self._process is not None:
      self._process.terminate()
      self._process.wait(10)
      self._process = None
    if self._thread is not None:
      asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(30)
      self._loop.close()
      self._thread = None

  def __enter__(self) -> "FakeOpenAI":
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def stats(self) -> dict:
    """{"request_counts", "served_counts", "fault_counts", "batches"} (a snapshot; batch lines
    count in request/served counts like online requests)."""
    if self._server is not None:  # snapshot on the server's loop: the counters change there

      async def snapshot():
        return json.loads(json.dumps(self._server.stats()))

      return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(30)
    with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_fake/stats") as r:
      return json.loads(r.read())

  @property
  def request_counts(self) -> Counter:
    return Counter(self.stats()["request_counts"])

  @property
  def served_counts(self) -> Counter:
    return Counter(self.stats()["served_counts"])

  @property
  def fault_counts(self) -> Counter:
    return Counter(self.stats()["fault_counts"])

