"""`python -m data_gen ...` end to end against the loopback server: SIGKILL and resume, budget,
missing key, secrets, dispatch to the filtering and decontamination CLIs."""

import json
import os
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


def test_rerun_with_larger_n_tops_up_and_smaller_n_never_shrinks(tmp_path):
  out = tmp_path / "tb"
  with FakeOpenAI() as server:
    for n in (30, 50, 20):
      r = subprocess.run(_command("textbooks", n, out, server, "--format", "parquet"),
                         env=_env(OPENAI_API_KEY=KEY),
                         capture_output=True, text=True, timeout=120)
      assert r.returncode == 0, r.stderr[-2000:]
    served = server.served_counts
  assert len(read_records(str(out))) == 50 and sum(served.values()) == 50
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
  # The budget covers the directory: the same command again adds nothing and spends nothing.
  with FakeOpenAI() as server:
    r = subprocess.run(_command("exercises", 500, out, server, "--budget-usd", str(budget)),
                       env=_env(OPENAI_API_KEY=KEY), capture_output=True, text=True, timeout=120)
  again = json.loads(r.stdout.strip().splitlines()[-1])
  assert r.returncode == 0 and again["stopped"] == "budget" and again["added"] == 0
  assert json.load(open(out / "manifest.json"))["usage"]["cost_usd"] <= budget


def test_output_of_another_kind_is_a_clear_error(tmp_path):
  out = tmp_path / "tb"
  with FakeOpenAI() as server:
    first = subprocess.run(_command("textbooks", 3, out, server), env=_env(OPENAI_API_KEY=KEY),
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


def test_batch_backend_generates_and_tops_up(tmp_path):
  out = tmp_path / "tb"
  with FakeOpenAI(batch_delay_s=0.1) as server:
    for n in (40, 60):
      r = subprocess.run(_command("textbooks", n, out, server, "--backend", "batch",
                                  "--batch-poll-s", "0.05"),
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
  code = ("import sys, data_gen.__main__, data_gen.llm, data_gen.runner, data_gen.textbooks, "
          "data_gen.exercises, data_gen.batch, data_gen.report, data_gen.shards, data_gen.testing; "
          "from data_gen.exercises import make_checker; make_checker().close(); "
          "print('jax' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == "False"
