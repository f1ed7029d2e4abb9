"""data_gen.batch against the loopback server's Batch API: resume after a kill, the error file
tallied and only retryable lines resubmitted, failed / cancelled / expired batches, chunking by the
API's limits with a window of batches in flight, files deleted."""

import asyncio
import json

import pytest

from phi1.llm.client import Budget
from phi1.llm.pricing import prices_for
from data_gen.batch import chunks, fill_cache
from data_gen.testing import FakeOpenAI
from test_llm import _llm as _online_llm, _request


def _llm(server, tmp_path, **kwargs):
  kwargs.setdefault("timeout_s", 5.0)  # a batch poll may wait on a slow file upload
  return _online_llm(server, tmp_path, **kwargs)


def _fill(server, tmp_path, n: int, **options):
  logged = []

  async def run():
    async with _llm(server, tmp_path, budget=Budget(1.0)) as llm:
      tally = await fill_cache(llm, [_request(i) for i in range(n)], poll_s=0.02,
                               log=logged.append, **options)
      return tally, llm.stats, llm.budget, len(llm.cache)

  return (*asyncio.run(run()), logged)


def test_batch_api_fills_the_same_cache_and_a_killed_run_resumes_its_batch(tmp_path):
  requests = [_request(i) for i in range(20)]
  with FakeOpenAI(batch_delay_s=0.5) as server:

    async def submit_then_die():
      async with _llm(server, tmp_path) as llm:
        job = asyncio.ensure_future(fill_cache(llm, requests, poll_s=0.05))
        while server.stats()["batches"] == 0:
          await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        job.cancel()  # the process "dies" while its batch is still running
        with pytest.raises(asyncio.CancelledError):
          await job
        return len(llm.cache)

    async def resume():
      async with _llm(server, tmp_path, budget=Budget(1.0)) as llm:
        stored = (await fill_cache(llm, requests, poll_s=0.05)).stored
        hits = [await llm.complete(r) for r in requests]
        return stored, hits, llm.stats, llm.budget

    assert asyncio.run(submit_then_die()) == 0
    stored, hits, stats, budget = asyncio.run(resume())
    assert server.stats()["batches"] == 1  # resumed polling; nothing submitted twice
    served = server.served_counts
  assert stored == 20 and all(h.cached for h in hits) and stats.cache_hits == 20
  assert len(served) == 20 and max(served.values()) == 1
  # Batch answers are billed at half price and count against the budget.
  full = prices_for("gpt-4o-mini").cost(stats.prompt_tokens, stats.completion_tokens)
  assert stats.cost_usd == pytest.approx(full / 2) and budget.spent_usd == pytest.approx(full / 2)



def test_the_error_file_is_tallied_and_only_retryable_lines_are_resubmitted(tmp_path):
  with FakeOpenAI(batch_delay_s=0.02,
                  batch_line_faults=["500", "context_length", "429"]) as server:
    tally, stats, _, cached, _ = _fill(server, tmp_path, 10)
    counts = server.request_counts
    batches = server.stats()["batches"]
  assert tally.failed == {"server_error": 1, "context_length_exceeded": 1,
                          "rate_limit_exceeded": 1}
  assert list(tally.rejected.values()) == ["context_length_exceeded"]
  assert tally.stored == cached == 9 and stats.requests == 9
  assert batches == 2 and tally.rounds == 2  # the second batch: the two retryable lines only
  assert sorted(counts.values()) == [1] * 8 + [2, 2]


def test_a_failed_batch_reports_its_errors(tmp_path):
  with FakeOpenAI(batch_delay_s=0.02, batch_outcomes=["failed"]) as server:
    tally, _, _, cached, logged = _fill(server, tmp_path, 4)
  assert cached == 0 and tally.stored == 0
  assert logged == ["batch batch_000001 failed: invalid_request: The batch failed (injected) "
                    "(line 1)"] == tally.batch_errors
  assert tally.failed == {"batch_failed:invalid_request": 4}


@pytest.mark.parametrize("outcome", ["cancelled", "expired"])
def test_a_cancelled_or_expired_batch_keeps_and_charges_its_partial_output(tmp_path, outcome):
  with FakeOpenAI(batch_delay_s=0.02, batch_outcomes=[outcome]) as server:
    tally, stats, budget, cached, _ = _fill(server, tmp_path, 10)
    statuses = server.stats()["batch_statuses"]
  assert statuses == {outcome: 1, "completed": 1}
  assert tally.failed == {f"batch_{outcome}": 5} and tally.stored == cached == 10
  half = prices_for("gpt-4o-mini").cost(stats.prompt_tokens, stats.completion_tokens) / 2
  assert stats.cost_usd == pytest.approx(half) and budget.spent_usd == pytest.approx(half)
  assert budget.reserved_usd == pytest.approx(0.0)


def test_inputs_are_chunked_and_submitted_as_earlier_batches_finish(tmp_path):
  one_request = 400 + len(json.dumps(_request(0).messages)) // 4
  # The server's enqueued-token limit holds about one chunk of 4: a window of one batch fits it.
  with FakeOpenAI(batch_delay_s=0.05, max_batch_lines=4,
                  max_enqueued_tokens=5 * one_request) as server:
    tally, _, _, cached, logged = _fill(server, tmp_path, 10, max_lines=4, window=1)
    stats = server.stats()
  assert cached == tally.stored == 10 and not logged
  assert stats["batch_statuses"] == {"completed": 3}
  assert stats["files"] == 0 and stats["deleted_files"] == 3 + 3  # inputs and outputs
  with FakeOpenAI(batch_delay_s=0.05, max_enqueued_tokens=5 * one_request) as server:
    tally, *_ = _fill(server, tmp_path / "all-at-once", 10, max_lines=4, window=3)
  assert any("token_limit_exceeded" in e for e in tally.batch_errors)
  assert tally.stored == 10  # the refused chunks went again once the first had finished


def test_chunks_respect_line_and_byte_limits():
  lines = [(f"k{i}", b"x" * 100) for i in range(10)]
  assert [len(c) for c in chunks(lines, 4, 10_000)] == [4, 4, 2]
  assert [len(c) for c in chunks(lines, 50_000, 350)] == [3, 3, 3, 1]
  with pytest.raises(ValueError, match="over the 50-byte"):
    chunks(lines, 4, 50)
