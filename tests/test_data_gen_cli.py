"""`python -m data_gen ...` end to end against the loopback server: SIGKILL and resume, budget,
missing key, secrets, dispatch to the filtering and decontamination CLIs."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from data_gen.__main__ import main
from data_gen.shards import read_records
from data_gen.testing import FakeOpenAI

KEY = "sk-test-secret-0123456789"
FAST = ["--timeout", "2", "--backoff-base", "0.005", "--backoff-max", "0.02", "--no-progress",
        "--max-attempts", "12"]


def _command(kind, n, out, server, *extra):
  return [sys.executable, "-m", "data_gen", kind, "--n", str(n), "--out", str(out), "--model",
          "gpt-4o-mini", "--base-url", server.base_url, "--concurrency", "32", *FAST, *extra]


SMALL_TABLE = """topics:
  - {name: loops, weight: 2, subtopics: [for loops, while loops]}
  - {name: recursion, weight: 1, subtopics: [base cases]}
audiences: [a student, a teacher]
styles: [a tutorial, a worked problem]
"""


@pytest.fixture
def small_table(tmp_path):
  """A three-seed textbook table: its topic tree costs three requests, not the default 270."""
  path = tmp_path / "small_textbooks.yaml"
  path.write_text(SMALL_TABLE)
  return ["--table", str(path), "--tree-width", "8"]


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
  return {**env, "PYTHONPATH": os.getcwd(), **extra}


def test_sigkill_halfway_then_rerun_finishes_without_paying_twice(tmp_path):
  n, out = 1000, tmp_path / "ex"
  with FakeOpenAI(fault_rate=0.2, latency_s=0.01, slow_s=3.0, retry_after_s=0.005) as server:
    process = subprocess.Popen(_command("exercises", n, out, server, "--shard-size", "150"),
                               env=_env(OPENAI_API_KEY=KEY), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
      if out.exists() and len(read_records(str(out))) >= n // 2:
        break
      time.sleep(0.02)
    assert process.poll() is None, "finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored_before = read_records(str(out))
    served_before = server.served_counts
    assert n // 2 <= len(stored_before) < n

    rerun = subprocess.run(_command("exercises", n, out, server, "--shard-size", "150"),
                           env=_env(OPENAI_API_KEY=KEY), capture_output=True, text=True, timeout=120)
    served_after = server.served_counts
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  summary = json.loads(rerun.stdout.strip().splitlines()[-1])
  assert summary["stored"] == n and summary["stopped"] == "done"
  assert summary["added"] == n - len(stored_before)
  records = read_records(str(out))
  assert len(records) == n and len({r["id"] for r in records}) == n
  assert len({r["text"] for r in records}) == n
  assert {r["id"] for r in stored_before} <= {r["id"] for r in records}
  for r in stored_before:  # nothing was requested again for a record stored before the kill
    assert served_after[r["request_hash"]] == served_before[r["request_hash"]]
  manifest = json.load(open(out / "manifest.json"))
  assert manifest["records"] == n and not list(out.glob("*.partial"))
  # Rerunning a finished directory sends nothing and changes nothing.
  with FakeOpenAI() as server:
    again = subprocess.run(_command("exercises", n, out, server), env=_env(OPENAI_API_KEY=KEY),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and sum(server.request_counts.values()) == 0
  # The key never reaches a file.
  for path in out.iterdir():
    assert KEY.encode() not in path.read_bytes(), path


def test_rerun_with_larger_n_tops_up_and_smaller_n_never_shrinks(tmp_path, small_table):
  out = tmp_path / "tb"
  with FakeOpenAI() as server:
    for n in (30, 50, 20):
      r = subprocess.run(_command("textbooks", n, out, server, "--format", "parquet", *small_table),
                         env=_env(OPENAI_API_KEY=KEY),
                         capture_output=True, text=True, timeout=120)
      assert r.returncode == 0, r.stderr[-2000:]
    served = server.served_counts
  # 50 sections and, once, one topic-tree request per seed subtopic.
  assert len(read_records(str(out))) == 50 and sum(served.values()) == 50 + 3
  assert (out / "topic_tree.yaml").exists()
  assert sorted(p.name for p in out.glob("shard-*.parquet")) == [
      "shard-00000.parquet", "shard-00001.parquet"]


def test_budget_stops_cleanly_before_it_is_exceeded(tmp_path):
  out, budget = tmp_path / "ex", 0.004
  with FakeOpenAI() as server:
    r = subprocess.run(_command("exercises", 500, out, server, "--budget-usd", str(budget)),
                       env=_env(OPENAI_API_KEY=KEY), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["stopped"] == "budget" and 0 < summary["stored"] < 500
  assert summary["cost_usd"] <= budget and "budget" in r.stderr
  manifest = json.load(open(out / "manifest.json"))
  assert manifest["records"] == summary["stored"] and manifest["usage"]["cost_usd"] <= budget
  assert len(read_records(str(out))) == summary["stored"]
  # The budget covers the directory, not each run: the same command again stays under it in total.
  # (It may still add a record or two: requests differ in worst-case cost, and a shorter prompt
  # than the one the first run stopped on can fit in what is left. A fresh budget would add ~as
  # many records as the first run did.)
  with FakeOpenAI() as server:
    r = subprocess.run(_command("exercises", 500, out, server, "--budget-usd", str(budget)),
                       env=_env(OPENAI_API_KEY=KEY), capture_output=True, text=True, timeout=120)
  again = json.loads(r.stdout.strip().splitlines()[-1])
  assert r.returncode == 0 and again["stopped"] == "budget"
  assert again["added"] <= summary["stored"] // 4
  manifest = json.load(open(out / "manifest.json"))
  assert manifest["usage"]["cost_usd"] <= budget
  assert manifest["records"] == summary["stored"] + again["added"] == len(read_records(str(out)))


def test_output_of_another_kind_is_a_clear_error(tmp_path, small_table):
  out = tmp_path / "tb"
  with FakeOpenAI() as server:
    first = subprocess.run(_command("textbooks", 3, out, server, *small_table),
                           env=_env(OPENAI_API_KEY=KEY),
                           capture_output=True, text=True, timeout=120)
    second = subprocess.run(_command("exercises", 3, out, server), env=_env(OPENAI_API_KEY=KEY),
                            capture_output=True, text=True, timeout=120)
  assert first.returncode == 0 and second.returncode == 2
  assert "holds textbooks records" in second.stderr and "Traceback" not in second.stderr


def test_missing_api_key_fails_before_any_work(tmp_path):
  out = tmp_path / "never"
  r = subprocess.run([sys.executable, "-m", "data_gen", "textbooks", "--n", "5", "--out", str(out),
                      "--model", "gpt-4o-mini"], env=_env(), capture_output=True, text=True)
  assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr and not out.exists()


def test_unknown_command_and_help(capsys):
  assert main(["frobnicate"]) == 2
  assert main(["--help"]) == 0
  assert "textbooks" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["filter", "decontaminate"])
def test_dispatches_to_the_other_data_gen_clis(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main([command, "--help"])
  assert exit_info.value.code == 0
  assert "usage" in capsys.readouterr().out.lower()


def test_batch_backend_generates_and_tops_up(tmp_path, small_table):
  out = tmp_path / "tb"
  with FakeOpenAI(batch_delay_s=0.1) as server:
    for n in (40, 60):
      r = subprocess.run(_command("textbooks", n, out, server, "--backend", "batch",
                                  "--batch-poll-s", "0.05", *small_table),
                         env=_env(OPENAI_API_KEY=KEY), capture_output=True, text=True, timeout=120)
      assert r.returncode == 0, r.stderr[-2000:]
      assert json.loads(r.stdout.strip().splitlines()[-1])["stored"] == n
    stats = server.stats()
  records = read_records(str(out))
  assert len(records) == 60 and len({r["id"] for r in records}) == 60
  assert stats["batches"] >= 2 and max(stats["served_counts"].values()) == 1
  for r in records:
    assert stats["served_counts"][r["request_hash"]] == 1


def test_generation_stack_does_not_import_jax():
  code = ("import sys, data_gen.__main__, phi1.llm.client, data_gen.runner, data_gen.textbooks, "
          "data_gen.exercises, data_gen.batch, data_gen.report, data_gen.shards, data_gen.testing; "
          "from data_gen.exercises import make_checker; make_checker().close(); "
          "print('jax' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == "False"


def _main(kind, n, out, server, *extra):
  """The CLI in this process (no interpreter start-up per call)."""
  return main([kind, "--n", str(n), "--out", str(out), "--model", "gpt-4o-mini", "--base-url",
               server.base_url, "--concurrency", "8", *FAST, *extra])


def test_rerun_with_other_settings_is_refused_or_recorded_as_a_new_run(tmp_path, capsys,
                                                                       monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  out = tmp_path / "ex"
  with FakeOpenAI() as server:
    assert _main("exercises", 12, out, server) == 0
    manifest = json.load(open(out / "manifest.json"))
    capsys.readouterr()
    for extra in (["--model", "gpt-4o"], ["--temperature", "0.5"], ["--docstring-examples"]):
      assert _main("exercises", 12, out, server, *extra) == 2
      err = capsys.readouterr().err
      assert "other settings" in err and "--new-run" in err and "Traceback" not in err
    assert json.load(open(out / "manifest.json")) == manifest  # nothing was touched
    # --new-run: a second run with its own settings, its records tagged; the first run is kept.
    assert _main("exercises", 5, out, server, "--temperature", "0.5", "--new-run") == 0
    # The same settings again continue that run (no flag needed) and top it up.
    assert _main("exercises", 8, out, server, "--temperature", "0.5") == 0
    served = sum(server.served_counts.values())
  records = read_records(str(out))
  by_run = {run: [r for r in records if r["run"] == run] for run in (0, 1)}
  assert len(by_run[0]) == 12 and len(by_run[1]) == 8 and served == 20
  assert all(r["id"].startswith("exercises-r1-") for r in by_run[1])
  runs = json.load(open(out / "manifest.json"))["generation_runs"]
  assert [r["settings"]["temperature"] for r in runs] == [1.0, 0.5]
  assert runs[0]["settings"]["prompt_version"] == "exercises-2"


def test_model_change_message_names_the_setting(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI() as server:
    assert _main("exercises", 3, tmp_path, server) == 0
    capsys.readouterr()
    assert _main("exercises", 3, tmp_path, server, "--model", "gpt-4o") == 2
  assert "model: 'gpt-4o-mini' -> 'gpt-4o'" in capsys.readouterr().err


def test_w_shards_together_equal_one_unsharded_run(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  n, world = 40, 3
  with FakeOpenAI() as server:
    assert _main("exercises", n, tmp_path / "one", server) == 0
    for rank in range(world):
      assert _main("exercises", n, tmp_path / "many", server, "--shard", f"{rank}/{world}") == 0
    # Ranks of another world size would overlap these slots: refused.
    assert _main("exercises", n, tmp_path / "many", server, "--shard", "0/2") == 2
    assert "sharded 3 ways" in capsys.readouterr().err
  one = {(r["id"], r["text"], r["slot"]) for r in read_records(str(tmp_path / "one"))}
  ranks = sorted((tmp_path / "many").glob("rank-*-of-00003"))
  assert [p.name for p in ranks] == [f"rank-0000{i}-of-00003" for i in range(world)]
  many = []
  for rank, path in enumerate(ranks):
    records = read_records(str(path))
    assert len(records) == len(range(rank, n, world))  # 14, 13, 13
    assert {r["slot"] % world for r in records} == {rank} and (path / "cache.sqlite").exists()
    assert json.load(open(path / "manifest.json"))["generation_runs"][0]["settings"]["shard"] == \
        f"{rank}/{world}"
    many += [(r["id"], r["text"], r["slot"]) for r in records]
  assert len(many) == n and set(many) == one


def test_a_rank_gets_its_share_of_the_budget(tmp_path, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI() as server:
    assert _main("exercises", 400, tmp_path, server, "--shard", "1/4", "--budget-usd", "0.004") == 0
  manifest = json.load(open(tmp_path / "rank-00001-of-00004" / "manifest.json"))
  assert 0 < manifest["usage"]["cost_usd"] <= 0.001 and 0 < manifest["records"] < 100


def test_sharded_textbooks_need_the_topic_tree_first(tmp_path, monkeypatch, capsys, small_table):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI() as server:
    assert _main("textbooks", 4, tmp_path, server, "--shard", "0/2", *small_table) == 2
    assert "--expand-topics-only" in capsys.readouterr().err
    assert _main("textbooks", 4, tmp_path, server, "--expand-topics-only", *small_table) == 0
    assert (tmp_path / "topic_tree.yaml").exists() and not list(tmp_path.glob("shard-*"))
    for rank in range(2):
      assert _main("textbooks", 4, tmp_path, server, "--shard", f"{rank}/2", *small_table) == 0
  assert sum(len(read_records(str(p))) for p in tmp_path.glob("rank-*")) == 4


def test_keep_invalid_stores_flagged_outputs_and_says_so_in_the_manifest(tmp_path, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  answers = iter(range(10 ** 6))

  def responder(body):  # every other answer does not parse
    if next(answers) % 2:
      return "```python\ndef broken(:\n    pass\n```\n"
    name = body["messages"][1]["content"].split("function named `")[1].split("`")[0]
    return (f'```python\ndef {name}(x: int) -> int:\n    """Double x."""\n    doubled = x * 2\n'
            "    return doubled + 1000\n```\n")

  with FakeOpenAI(responder=responder) as server:
    assert _main("exercises", 10, tmp_path / "strict", server) == 0
    assert _main("exercises", 10, tmp_path / "kept", server, "--keep-invalid") == 0
  strict, kept = read_records(str(tmp_path / "strict")), read_records(str(tmp_path / "kept"))
  assert all(r["valid"] for r in strict) and len(strict) == 10
  invalid = [r for r in kept if not r["valid"]]
  assert len(kept) == 10 and invalid and all(r["invalid_reason"] == "syntax_error" for r in invalid)
  assert all("def broken(:" in r["text"] and "prompt" not in r for r in invalid)
  manifest = json.load(open(tmp_path / "kept" / "manifest.json"))
  assert manifest["invalid_kept"] == {"syntax_error": len(invalid)}
  assert manifest["generation_runs"][0]["settings"]["keep_invalid"] is True


def test_textbooks_against_a_rate_limiting_refusing_rejecting_server_store_all_n(
    tmp_path, monkeypatch, capsys, small_table):
  """The server allows 8 requests per 0.25 s window, refuses one answer and rejects one request
  with a 400 (sticky: that body is rejected every time). All --n records are stored, no 429 is
  provoked, the refusal is asked once more (and succeeds), and the rejected request is skipped,
  counted, its place taken by the next slot."""
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI() as server:  # the topic tree first, as before a large run
    assert _main("textbooks", 12, tmp_path, server, "--expand-topics-only", *small_table) == 0
  with FakeOpenAI(rpm=8, window_s=0.25, first_faults=["refusal", "context_length"]) as server:
    assert _main("textbooks", 12, tmp_path, server, *small_table) == 0
    faults = server.fault_counts
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert faults == {"refusal": 1, "context_length": 1}  # and no "rate_limited"
  assert summary["stored"] == 12 and summary["stopped"] == "done"
  assert summary["rejected"] == {"context_length_exceeded": 1} and summary["refusals"] == 1
  assert summary["errors"] == {} and len(read_records(str(tmp_path))) == 12
  manifest = json.load(open(tmp_path / "manifest.json"))
  assert manifest["runs"][-1]["rejected"] == {"context_length_exceeded": 1}
  assert manifest["usage"]["refusals"] == 1
  for path in tmp_path.iterdir():  # the key reaches no file
    assert path.is_dir() or KEY.encode() not in path.read_bytes(), path


def test_too_many_rejected_requests_stop_the_job(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI(fault_rate=1.0, faults=("invalid_value",)) as server:
    assert _main("exercises", 30, tmp_path, server, "--max-rejected-fraction", "0.1") == 1
  err = capsys.readouterr().err
  # Past max(10, 0.1 x 30) rejections it stops (requests already in flight are counted too).
  rejected = int(re.search(r"(\d+) requests rejected \{'invalid_value': \d+\}", err).group(1))
  assert 10 < rejected <= 10 + 16 and "--max-rejected-fraction 0.1" in err  # window: 16
  assert "Traceback" not in err


def test_fatal_endpoint_errors_are_one_line(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI(fault_rate=1.0, faults=("401",)) as server:
    assert _main("exercises", 5, tmp_path, server) == 1
  err = capsys.readouterr().err
  assert "OPENAI_API_KEY" in err and "Traceback" not in err and KEY not in err


def test_a_budget_that_stores_nothing_is_a_failure(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI() as server:
    assert _main("exercises", 5, tmp_path, server, "--budget-usd", "0.0000001") == 1
    assert sum(server.request_counts.values()) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "before any record was stored" in err[0] and "--budget-usd" in err[0]


def test_batch_backend_survives_an_expired_batch_and_a_rejected_line(tmp_path, monkeypatch,
                                                                     capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI(batch_delay_s=0.02, batch_outcomes=["expired"],
                  batch_line_faults=["context_length"]) as server:
    assert _main("exercises", 10, tmp_path, server, "--backend", "batch",
                 "--batch-poll-s", "0.02") == 0
    stats = server.stats()
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["stored"] == 10 and summary["rejected"] == {"context_length_exceeded": 1}
  assert len(read_records(str(tmp_path))) == 10 and stats["files"] == 0


def test_a_failed_batch_is_an_error_that_says_why(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  with FakeOpenAI(batch_delay_s=0.02, batch_outcomes=["failed"] * 3) as server:
    assert _main("exercises", 5, tmp_path, server, "--backend", "batch",
                 "--batch-poll-s", "0.02") == 1
  err = capsys.readouterr().err
  assert "no usable answers" in err and "invalid_request: The batch failed" in err
