"""Throughput of data_gen's LLM layer against the loopback OpenAI-compatible server.

    python bench/llm_throughput.py [--concurrency 64] [--latency 0.05] [--requests 4000]

The server (data_gen.testing.FakeOpenAI, in its own process) answers every request after a fixed
latency, so the ideal rate is concurrency / latency (64 / 0.05 s = 1280 requests/s); the layer under
test pays full price for everything a real run does per request: cache lookup and commit, budget,
limiter, retry wrapper, the `openai` client, response parsing. Also measured in the same run, for
context: the stock `openai` client (httpx transport, typed `chat.completions.create`) with only a
semaphore. Prints measured and ideal, then the JSON line (ratio = ours / ideal).
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

from data_gen.llm import LLM, Budget, Request  # noqa: E402
from data_gen.testing import FakeOpenAI  # noqa: E402


def _request(i: int) -> Request:
  return Request(messages=[{"role": "user", "content": f"Write a textbook section on \"topic {i}\"."}],
                 params={"temperature": 1.0, "max_tokens": 512}, seed=i)


async def ours(base_url: str, concurrency: int, n: int, cache_dir: str) -> float:
  async with LLM("gpt-4o-mini", base_url=base_url, api_key="bench", concurrency=concurrency,
                 cache=os.path.join(cache_dir, "cache.sqlite"), budget=Budget(1e9)) as llm:
    await asyncio.gather(*[llm.complete(_request(-1 - i)) for i in range(2 * concurrency)])  # warm
    start = time.perf_counter()
    await asyncio.gather(*[llm.complete(_request(i)) for i in range(n)])
    elapsed = time.perf_counter() - start
    assert llm.stats.requests == n + 2 * concurrency and llm.stats.cache_hits == 0
    return n / elapsed


async def stock_client(base_url: str, concurrency: int, n: int) -> float:
  client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
  semaphore = asyncio.Semaphore(concurrency)

  async def one(i):
    async with semaphore:
      r = _request(i)
      response = await client.chat.completions.create(model="gpt-4o-mini", messages=r.messages,
                                                      seed=r.seed, **r.params)
      return response.choices[0].message.content

  await asyncio.gather(*[one(-1 - i) for i in range(2 * concurrency)])
  start = time.perf_counter()
  await asyncio.gather(*[one(i) for i in range(n)])
  elapsed = time.perf_counter() - start
  await client.close()
  return n / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--concurrency", type=int, default=64)
  parser.add_argument("--latency", type=float, default=0.05)
  parser.add_argument("--requests", type=int, default=4000)
  args = parser.parse_args()
  ideal = args.concurrency / args.latency
  with FakeOpenAI(latency_s=args.latency, subprocess=True) as server, \
      tempfile.TemporaryDirectory() as cache_dir:
    measured = asyncio.run(ours(server.base_url, args.concurrency, args.requests, cache_dir))
    stock = asyncio.run(stock_client(server.base_url, args.concurrency, args.requests))
  machine = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU"
  print(f"data_gen.llm: {measured:.0f} requests/s at concurrency {args.concurrency}, "
        f"{args.latency * 1000:.0f} ms latency; ideal {ideal:.0f} requests/s "
        f"({measured / ideal:.0%} of ideal; >= 80% required)")
  print(f"stock openai client + semaphore (context): {stock:.0f} requests/s ({stock / ideal:.0%})")
  print(json.dumps({"name": "llm_throughput", "ours": round(measured, 1), "peer": round(ideal, 1),
                    "ratio": round(measured / ideal, 3), "unit": "requests/s",
                    "machine": machine, "peer_is": "ideal (concurrency / latency)",
                    "stock_openai_client": round(stock, 1)}))


if __name__ == "__main__":
  main()
