"""Saved, resumable generations against the loopback OpenAI server: a killed server, a SIGKILLed
process, settings mismatches, 429/500 faults, saved executions, and --samples GENERATIONS."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from data_gen.testing import FakeOpenAI
from phi1.evals import cli, generations, humaneval
from phi1.evals import run as run_lib

LIMIT = 12
TASKS = humaneval.load()[:LIMIT]
BY_PROMPT = {t.prompt: i for i, t in enumerate(TASKS)}


def answer(body: dict) -> str:
  """Right for even-numbered problems, wrong for odd ones: pass@1 is exactly 0.5."""
  i = BY_PROMPT[body["prompt"]]
  return TASKS[i].reference if i % 2 == 0 else "    return None\n"


def args(url: str, out, *extra) -> list[str]:
  return ["--bench", "humaneval", "--openai-base-url", url, "--model", "m", "--limit", str(LIMIT),
          "--out", str(out), "--no-progress", "--concurrency", "2", *extra]


def summary_of(capsys) -> dict:
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def saved_lines(out) -> int:
  path = out / generations.GENERATIONS
  return path.read_text().count("\n") if path.exists() else 0


def total_requests(server) -> int:
  return sum(server.request_counts.values())


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_killed_server_then_rerun_requests_only_what_is_missing_and_scores_the_same(
    tmp_path, capsys):
  with FakeOpenAI(responder=answer) as server:
    assert cli.main(args(server.base_url, tmp_path / "clean")) == 0
    clean = summary_of(capsys)
  assert clean["pass@1"] == 0.5

  out = tmp_path / "interrupted"
  server = FakeOpenAI(responder=answer, latency_s=0.05).start()

  def kill_after_some_answers():
    while saved_lines(out) < 4:
      time.sleep(0.01)
    server.stop()

  killer = threading.Thread(target=kill_after_some_answers)
  killer.start()
  start = time.monotonic()
  rc = cli.main(args(server.base_url, out, "--max-attempts", "2"))
  elapsed = time.monotonic() - start
  killer.join()
  err = capsys.readouterr().err
  assert rc == 1 and elapsed < 60
  assert "generation failed" in err and "sample 0 failed" in err and "connection failed" in err
  saved = saved_lines(out)
  assert 4 <= saved < LIMIT

  with FakeOpenAI(responder=answer) as again:  # a new server (new port): the URL is not a setting
    assert cli.main(args(again.base_url, out)) == 0
    assert total_requests(again) == LIMIT - saved
  resumed = summary_of(capsys)
  assert resumed["pass@1"] == clean["pass@1"]
  assert resumed["protocol"]["generator"]["generations"] == dict(
      loaded=saved, requested=LIMIT - saved, total=LIMIT)


def test_sigkilled_process_then_rerun_requests_only_what_is_missing(tmp_path, capsys):
  out = tmp_path / "out"
  with FakeOpenAI(responder=answer, latency_s=0.1) as server:
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-m", "phi1.evals.cli", *args(server.base_url, out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while saved_lines(out) < 3 and time.monotonic() < deadline and child.poll() is None:
      time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with open(out / generations.GENERATIONS, "a") as f:
      f.write('{"task_id": "HumanEval/9", "sample_id"')  # what a kill mid-write leaves
    saved = saved_lines(out)
    assert 3 <= saved < LIMIT
    before = total_requests(server)
    assert cli.main(args(server.base_url, out)) == 0
    assert total_requests(server) - before == LIMIT - saved
  assert summary_of(capsys)["pass@1"] == 0.5
  rows = [json.loads(line) for line in (out / generations.GENERATIONS).read_text().splitlines()]
  assert sorted((r["task_id"], r["sample_id"]) for r in rows) == sorted(
      (t.task_id, 0) for t in TASKS)


def test_settings_mismatch_is_refused_naming_the_keys(tmp_path, capsys):
  with FakeOpenAI(responder=answer) as server:
    assert cli.main(args(server.base_url, tmp_path)) == 0
    capsys.readouterr()
    before = total_requests(server)
    rc = cli.main(args(server.base_url, tmp_path, "--temperature", "0.5", "--max-new-tokens", "99"))
    err = capsys.readouterr().err
    assert rc == 2 and total_requests(server) == before
  assert "temperature: saved 0.0, now 0.5" in err and "max_new_tokens: saved 512, now 99" in err
  assert "use a new --out" in err


def test_transient_429_and_500_are_retried_and_recovered(tmp_path, capsys):
  with FakeOpenAI(responder=answer, fault_rate=0.3, faults=("429", "500"),
                  retry_after_s=0.05) as server:
    assert cli.main(args(server.base_url, tmp_path, "--concurrency", "4")) == 0
    faults = server.fault_counts
  assert faults["429"] + faults["500"] > 0
  assert summary_of(capsys)["pass@1"] == 0.5


def test_exhausted_retries_name_the_request_and_the_server_answer(tmp_path, capsys):
  with FakeOpenAI(fault_rate=1.0, faults=("500",)) as server:
    start = time.monotonic()
    rc = cli.main(args(server.base_url, tmp_path, "--max-attempts", "2"))
    elapsed = time.monotonic() - start
    sent = total_requests(server)
  err = capsys.readouterr().err
  assert rc == 1 and elapsed < 60
  assert "sample 0 failed: 2 attempts failed (last: HTTP 500" in err
  assert sent <= 2 * 2  # two workers' requests, two attempts each: nothing new after the failure


def test_samples_accepts_a_generations_file_and_executions_resume(tmp_path, capsys, monkeypatch):
  with FakeOpenAI(responder=answer) as server:
    assert cli.main(args(server.base_url, tmp_path / "gen")) == 0
  first = summary_of(capsys)
  rc = cli.main(["--bench", "humaneval", "--limit", str(LIMIT), "--no-progress",
                 "--samples", str(tmp_path / "gen" / generations.GENERATIONS),
                 "--out", str(tmp_path / "exec")])
  again = summary_of(capsys)
  assert rc == 0 and again["pass@1"] == first["pass@1"] == 0.5
  assert again["protocol"]["generator"]["kind"] == "generations"
  assert again["protocol"]["stops"] == first["protocol"]["stops"]

  # Executed rows are saved: rerunning with the same --out executes nothing new.
  executed = []
  real_run = run_lib.Sandbox.run
  monkeypatch.setattr(run_lib.Sandbox, "run",
                      lambda self, programs, **kw: executed.extend(programs) or real_run(
                          self, programs, **kw))
  assert cli.main(["--bench", "humaneval", "--limit", str(LIMIT), "--no-progress",
                   "--samples", str(tmp_path / "gen" / generations.GENERATIONS),
                   "--out", str(tmp_path / "exec")]) == 0
  assert executed == [] and summary_of(capsys)["pass@1"] == 0.5


def test_a_torn_last_line_is_dropped_and_cut(tmp_path):
  path = tmp_path / "log.jsonl"
  path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
  log = generations.JsonlLog(str(path))
  assert log.read() == [{"a": 1}, {"a": 2}]
  log.append([{"a": 3}])
  log.close()
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {"a": 1}, {"a": 2}, {"a": 3}]


def test_a_resumed_checkpoint_eval_draws_the_samples_an_uninterrupted_one_drew(tmp_path, capsys,
                                                                              monkeypatch):
  """Temperature > 0 on our own model: a sample's randomness is keyed by (task, sample index), not
  by where it sits in the batch the rerun builds from what is missing."""
  import types
  from flax import nnx
  from phi1.model import Phi1, Phi1Config
  model = Phi1(Phi1Config.tiny(max_seq_len=128), rngs=nnx.Rngs(0))
  tokenizer = types.SimpleNamespace(encode=lambda s: [ord(c) % 500 for c in s],
                                    decode=lambda ids: "".join(chr(i) for i in ids),
                                    eos_id=None, vocab_size=500)
  monkeypatch.setitem(sys.modules, "phi1.checkpoint", types.SimpleNamespace(
      load_for_inference=lambda path: (model, tokenizer)))
  run = lambda out: cli.main(["--bench", "humaneval", "--checkpoint", str(tmp_path / "ckpt"),
                              "--limit", "3",
                              "--n", "2", "--temperature", "1.5", "--max-new-tokens", "12",
                              "--out", str(out), "--no-progress"])
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  assert run(whole) == 0
  lines = (whole / generations.GENERATIONS).read_text().splitlines()
  resumed.mkdir()
  (resumed / generations.GENERATIONS).write_text("\n".join(lines[1:5:3]) + "\n")  # 2 of 6 saved
  assert run(resumed) == 0
  raw = lambda out: {(r["task_id"], r["sample_id"]): r["raw"] for r in map(
      json.loads, (out / generations.GENERATIONS).read_text().splitlines())}
  assert len(raw(whole)) == 6 and raw(resumed) == raw(whole)
  assert len(set(raw(whole).values())) == 6  # the samples really differ from each other
  capsys.readouterr()


def _fake_checkpoint_model(monkeypatch, answers, calls):
  """`phi1.checkpoint` / `phi1.generate` stand-ins: answers[prompt] is the model's text; calls
  records the prompts of each generate call, and `calls.hook(n)` runs before the n-th call."""
  import types
  model = types.SimpleNamespace(config=types.SimpleNamespace(max_seq_len=100_000))
  tokenizer = types.SimpleNamespace(encode=list)

  def generate(model, tokenizer, prompts, **kwargs):
    calls.append(list(prompts))
    hook = getattr(calls, "hook", None)
    if hook:
      hook(len(calls))
    return [answers[p] for p in prompts]

  monkeypatch.setitem(sys.modules, "phi1.checkpoint", types.SimpleNamespace(
      load_for_inference=lambda path, **kw: (model, tokenizer)))
  monkeypatch.setitem(sys.modules, "phi1.generate", types.SimpleNamespace(generate=generate))


class _Calls(list):
  pass


def _export(path, weights: bytes):
  (path / "params").mkdir(parents=True, exist_ok=True)
  (path / "phi1_config.json").write_text("{}")
  (path / "params" / "d.bin").write_bytes(weights)
  return path


def test_retrained_weights_at_the_same_path_are_not_scored_with_the_old_answers(
    tmp_path, capsys, monkeypatch):
  tasks = humaneval.load()[:3]
  calls = _Calls()
  _fake_checkpoint_model(monkeypatch, {t.prompt: t.reference for t in tasks}, calls)
  export = _export(tmp_path / "export", b"weights of the first model")
  run = lambda: cli.main(["--bench", "humaneval", "--checkpoint", str(export), "--limit", "3",
                          "--out", str(tmp_path / "out"), "--no-progress"])
  assert run() == 0
  weights = summary_of(capsys)["protocol"]["generator"]["weights"]
  assert run() == 0 and len(calls) == 1  # the same weights: every answer reused
  _export(export, b"weights of a retrained model")
  assert run() == 2 and len(calls) == 1
  err = capsys.readouterr().err
  assert f"the weights at {export} changed" in err and weights in err and "new --out" in err


def test_checkpoint_generations_stream_to_out_and_sigterm_loses_only_the_running_batch(
    tmp_path, capsys, monkeypatch):
  tasks = humaneval.load()[:5]
  calls = _Calls()
  _fake_checkpoint_model(monkeypatch, {t.prompt: t.reference for t in tasks}, calls)
  export = _export(tmp_path / "export", b"w")
  calls.hook = lambda n: n == 2 and os.kill(os.getpid(), signal.SIGTERM)
  argv = ["--bench", "humaneval", "--checkpoint", str(export), "--limit", "5", "--batch-size", "2",
          "--out", str(tmp_path / "out")]
  assert cli.main(argv) == 128 + signal.SIGTERM
  err = capsys.readouterr().err
  assert "rerun the same command" in err and "generate" in err  # the progress bar was shown
  assert saved_lines(tmp_path / "out") == 2  # the first batch, saved as it finished
  calls.hook = None
  assert cli.main(argv + ["--no-progress"]) == 0
  summary = summary_of(capsys)
  assert summary["protocol"]["generator"]["generations"] == dict(loaded=2, requested=3, total=5)
  assert sum(map(len, calls)) == 2 + 2 + 3 and summary["pass@1"] == 1.0


def test_samples_reads_bigcode_generations_json_and_names_the_formats_it_refuses(
    tmp_path, capsys):
  tasks = humaneval.load()[:3]
  # bigcode's HumanEval keeps the prompt in each generation; a bare continuation works too.
  lists = [[tasks[0].prompt + tasks[0].reference, tasks[0].prompt + "    pass\n"],
           [tasks[1].reference, "    return None\n"], [tasks[2].prompt + tasks[2].reference] * 2,
           ["ignored: past --limit"]]
  (tmp_path / "generations.json").write_text(json.dumps(lists))
  assert cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "generations.json"),
                   "--limit", "3", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
  summary = summary_of(capsys)
  assert summary["num_samples"] == 6 and summary["pass@1"] == pytest.approx(4 / 6)
  assert summary["protocol"]["generator"]["kind"] == "bigcode-generations"
  (tmp_path / "other.json").write_text(json.dumps({"HumanEval/0": ["x"]}))
  assert cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "other.json"),
                   "--limit", "3", "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "no usable sample" in err and "bigcode-evaluation-harness's generations.json" in err
