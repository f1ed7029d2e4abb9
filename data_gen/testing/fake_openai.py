"""A real OpenAI-compatible HTTP server on loopback, with fault injection, rate-limit windows and
the Batch API's terminal states, for tests, benches and offline rehearsal
(`python -m data_gen.fake_server`).

    from data_gen.testing import FakeOpenAI
    with FakeOpenAI(fault_rate=0.2, latency_s=0.05) as server:
      client = openai.OpenAI(base_url=server.base_url, api_key="test")
      ...
      server.served_counts   # Counter: body_hash(request body) -> successful responses
      server.request_counts  # Counter: body_hash(request body) -> all attempts (faulted too)
      server.fault_counts    # Counter: fault kind -> times injected ("rate_limited": window 429s)

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, and the Batch API's
POST /v1/files, GET /v1/files/{id}/content, DELETE /v1/files/{id}, POST /v1/batches,
GET /v1/batches/{id}. Any API key and any model name are accepted. Faults, the rate window and the
batch outcomes are described in data_gen.testing.server; the canned answers in
data_gen.testing.answers (`max_tokens` is honoured: token = 4 characters here, longer answers are
cut with finish_reason "length"). Pass `responder=lambda body: "text"` to answer with your own text.

Runs in a background thread (default) or, with `subprocess=True`, in a child process (so a
benchmark's client does not share the GIL with the server); counters then come over HTTP.
"""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from typing import Callable

from aiohttp import web

from data_gen.testing.answers import body_hash, default_answer  # noqa: F401  (re-exported)
from data_gen.testing.server import FAULTS, RETRYABLE_FAULTS, Server  # noqa: F401


async def _serve(server: Server, sock: socket.socket) -> web.AppRunner:
  runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
  await runner.setup()
  await web.SockSite(runner, sock).start()
  return runner


def serve_forever(kwargs: dict, port: int = 0, announce=None):
  """Serves on 127.0.0.1:`port` (0: any free port) until terminated; `announce(port)` once
  listening (default: print the port, which `subprocess=True` reads)."""
  try:
    import uvloop
    uvloop.install()
  except ImportError:
    pass
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", port))
  sock.listen(1024)
  loop = asyncio.new_event_loop()
  loop.run_until_complete(_serve(Server(**kwargs), sock))
  (announce or (lambda p: print(p, flush=True)))(sock.getsockname()[1])
  loop.run_forever()


class FakeOpenAI:
  """See the module docstring."""

  def __init__(self, *, fault_rate: float = 0.0, faults=RETRYABLE_FAULTS, latency_s: float = 0.0,
               retry_after_s: float = 0.05, slow_s: float = 5.0, seed: int = 0,
               responder: Callable[[dict], str] | None = None, batch_delay_s: float = 0.0,
               subprocess: bool = False, **options):
    """`options`: the rest of `data_gen.testing.server.Server`'s (first_faults, rpm, tpm,
    window_s, batch_outcomes, batch_line_faults, max_batch_lines, max_file_bytes,
    max_enqueued_tokens)."""
    if not 0.0 <= fault_rate <= 1.0:
      raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
    if subprocess and responder is not None:
      raise ValueError("a custom responder needs the in-thread server (subprocess=False)")
    self._kwargs = dict(fault_rate=fault_rate, faults=faults, latency_s=latency_s,
                        retry_after_s=retry_after_s, slow_s=slow_s, seed=seed,
                        responder=responder, batch_delay_s=batch_delay_s, **options)
    Server(**self._kwargs)  # bad options fail here, in the caller's thread
    self._subprocess = subprocess
    self._server: Server | None = None
    self._loop = self._thread = self._process = None
    self.base_url = None

  def start(self) -> "FakeOpenAI":
    if self._subprocess:  # a plain child process: no multiprocessing re-import of __main__
      kwargs = {k: v for k, v in self._kwargs.items() if k != "responder"}
      self._process = subprocess.Popen(
          [sys.executable, "-c", "import sys, json; from data_gen.testing.fake_openai import "
           "serve_forever; serve_forever(json.loads(sys.argv[1]))", json.dumps(kwargs)],
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
    self._server = Server(**self._kwargs)
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
    """{"request_counts", "served_counts", "fault_counts", "batches", "batch_statuses", "files",
    "deleted_files"} (a snapshot; batch lines count in request/served counts like online
    requests)."""
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

