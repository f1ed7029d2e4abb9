"""Throughput of the LLM client (phi1.llm, what data_gen runs on) against the loopback server.

    python bench/llm_throughput.py [--concurrency 64] [--latency 0.05] [--requests 8000] [--rounds 4]

The server (data_gen.testing.FakeOpenAI, in its own process) answers every request after a fixed
latency, so the ideal rate is concurrency / latency (64 / 0.05 s = 1280 requests/s); the layer under
test pays full price for everything a real run does per request: cache lookup and commit, budget,
limiter (fed by the `x-ratelimit-*` headers the server sends on every answer, as OpenAI does, with
limits too high to bind), retry wrapper, the `openai` client's raw-request path
(`client.post(cast_to=httpx2.Response)`, which builds each request and its headers) on its aiohttp
HTTP client, response parsing. Also measured, for context: the stock `openai` client (default
httpx transport, typed `chat.completions.create`) with only a semaphore. The two alternate in
rounds so that both see the same machine load (this is a shared machine).

The ideal is a steady-state rate, so the rate compared with it is too: each round is timed from
its (2 x concurrency)-th answer to its (n - 2 x concurrency)-th, leaving out the start, where every
worker sends at once and the answers come back in phase-locked waves, and the drain, where fewer
than `concurrency` requests are left. A generation run of millions of requests is all steady state;
a 1,000-request round with its ramp included would measure the ramp (about 0.1 of ideal lower
for a client that spends ~0.7 ms of CPU per request). The whole-round rate is printed too.
Last, for context, the whole `textbooks` job (data_gen.runner: constraint sampling, validation,
shard writes) against the same server, with its own cache and output.
Prints measured and ideal, client CPU per request, then the JSON line (ratio = steady / ideal).
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import openai  # noqa: E402

from phi1.llm.client import LLM, Budget, Request  # noqa: E402
from data_gen.runner import generate  # noqa: E402
from data_gen.shards import ShardWriter  # noqa: E402
from data_gen.tables import load_table  # noqa: E402
from data_gen.testing import FakeOpenAI  # noqa: E402
from data_gen.textbooks import TextbookTask  # noqa: E402


def _request(i: int) -> Request:
  return Request(messages=[{"role": "user", "content": f"Write a textbook section on \"topic {i}\"."}],
                 params={"temperature": 1.0, "max_tokens": 512}, seed=i)


class Timing:
  """Wall and CPU seconds of one round, whole and over its steady window (answers `skip` to
  n - `skip`)."""

  def __init__(self, n: int, skip: int):
    if n <= 2 * skip + 1:
      raise ValueError(f"a round of {n} requests has no steady window after leaving out "
                       f"{skip} at each end: ask for more --requests or fewer --rounds")
    self.n, self.skip, self.marks = n, skip, []

  def mark(self):
    self.marks.append((time.perf_counter(), time.process_time()))

  def steady(self) -> tuple[int, float, float]:
    (t0, c0), (t1, c1) = self.marks[self.skip], self.marks[self.n - self.skip]
    return self.n - 2 * self.skip, t1 - t0, c1 - c0

  def whole(self) -> float:
    return self.marks[-1][0] - self.marks[0][0]


async def _timed(one, ids, workers: int) -> Timing:
  """Run `one(i)` for every i with `workers` requests queued or in flight, as data_gen.runner does
  (its window is 2 x concurrency): not one task per request created up front, whose set-up would
  all run before the first answer is read. Marks the start and every answer."""
  ids = list(ids)
  timing = Timing(len(ids), skip=workers)
  pending = iter(ids)

  async def worker():
    for i in pending:
      await one(i)
      timing.mark()

  timing.mark()
  await asyncio.gather(*[worker() for _ in range(workers)])
  return timing


async def measure(base_url: str, concurrency: int, n: int, rounds: int, cache_dir: str) -> dict:
  stock = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
  semaphore = asyncio.Semaphore(concurrency)

  async def stock_one(i):
    async with semaphore:
      r = _request(i)
      response = await stock.chat.completions.create(model="gpt-4o-mini", messages=r.messages,
                                                     seed=r.seed, **r.params)
      return response.choices[0].message.content

  totals = dict.fromkeys(["ours_n", "ours_s", "ours_cpu_s", "ours_whole_s", "stock_n", "stock_s"],
                         0.0)
  async with LLM("gpt-4o-mini", base_url=base_url, api_key="bench", concurrency=concurrency,
                 cache=os.path.join(cache_dir, "cache.sqlite"), budget=Budget(1e9)) as llm:
    warm = 2 * concurrency  # connections opened, code paths warm
    await asyncio.gather(*[llm.complete(_request(-1 - i)) for i in range(warm)],
                         *[stock_one(-1 - i) for i in range(warm)])
    per_round = n // rounds
    for r in range(rounds):
      ids = range(r * per_round, (r + 1) * per_round)
      ours = await _timed(lambda i: llm.complete(_request(i)), ids, 2 * concurrency)
      counted, elapsed, cpu = ours.steady()
      totals["ours_n"] += counted
      totals["ours_s"] += elapsed
      totals["ours_cpu_s"] += cpu
      totals["ours_whole_s"] += ours.whole()
      counted, elapsed, _ = (await _timed(stock_one, ids, 2 * concurrency)).steady()
      totals["stock_n"] += counted
      totals["stock_s"] += elapsed
    assert llm.stats.requests == warm + rounds * per_round and llm.stats.cache_hits == 0
    assert llm.limiter.headers_seen  # every request went through the header-paced path
  await stock.close()
  done = rounds * per_round
  return {"ours": totals["ours_n"] / totals["ours_s"], "ours_whole": done / totals["ours_whole_s"],
          "stock": totals["stock_n"] / totals["stock_s"],
          "cpu_us": totals["ours_cpu_s"] / totals["ours_n"] * 1e6}


async def end_to_end(base_url: str, concurrency: int, n: int, out_dir: str) -> float:
  """Valid textbook records per second written by the real runner (fresh cache and output)."""
  task = TextbookTask(load_table("textbooks"), seed=0)
  os.makedirs(out_dir)
  async with LLM("gpt-4o-mini", base_url=base_url, api_key="bench", concurrency=concurrency,
                 cache=os.path.join(out_dir, "cache.sqlite")) as llm:
    with ShardWriter(os.path.join(out_dir, "textbooks"), kind="textbooks") as writer:
      start = time.perf_counter()
      summary = await generate(task, llm, writer, n, progress=False)
      elapsed = time.perf_counter() - start
  assert summary.ok and summary.added == n, summary
  return n / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--concurrency", type=int, default=64)
  parser.add_argument("--latency", type=float, default=0.05)
  parser.add_argument("--requests", type=int, default=8000)
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  ideal = args.concurrency / args.latency
  load_before = os.getloadavg()[0]
  with FakeOpenAI(latency_s=args.latency, subprocess=True, rpm=10 ** 9, tpm=10 ** 12) as server, \
      tempfile.TemporaryDirectory() as cache_dir:
    m = asyncio.run(measure(server.base_url, args.concurrency, args.requests, args.rounds,
                            cache_dir))
    records_per_s = asyncio.run(end_to_end(server.base_url, args.concurrency, args.requests // 2,
                                           os.path.join(cache_dir, "job")))
  load = max(load_before, os.getloadavg()[0])
  machine = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU"
  print(f"phi1.llm.client: {m['ours']:.0f} requests/s at concurrency {args.concurrency}, "
        f"{args.latency * 1000:.0f} ms latency; ideal {ideal:.0f} requests/s "
        f"({m['ours'] / ideal:.0%} of ideal, steady state; target >= 80%)")
  print(f"whole rounds, start and drain included: {m['ours_whole']:.0f} requests/s "
        f"({m['ours_whole'] / ideal:.0%})")
  print(f"client CPU {m['cpu_us']:.0f} us/request (one free core: ~{1e6 / m['cpu_us']:.0f} "
        f"requests/s); load average {load:.1f} on {os.cpu_count()} cores")
  print(f"stock openai client + semaphore, same rounds (context): {m['stock']:.0f} requests/s "
        f"({m['stock'] / ideal:.0%}); ours is {m['ours'] / m['stock']:.1f}x")
  print(f"whole textbooks job (runner, validation, shards), same server: {records_per_s:.0f} "
        f"records/s")
  print(json.dumps({"name": "llm_throughput", "ours": round(m["ours"], 1), "peer": round(ideal, 1),
                    "ratio": round(m["ours"] / ideal, 3), "unit": "requests/s", "machine": machine,
                    "peer_is": "ideal (concurrency / latency)",
                    "ours_whole_rounds": round(m["ours_whole"], 1),
                    "stock_openai_client": round(m["stock"], 1),
                    "client_cpu_us_per_request": round(m["cpu_us"]),
                    "textbooks_job_records_per_s": round(records_per_s, 1),
                    "load_average": round(load, 1)}))


if __name__ == "__main__":
  main()
