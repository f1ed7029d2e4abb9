"""`phi1 eval` end to end: samples on disk (clean and hostile input), an OpenAI-compatible server."""

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from phi1.evals import cli, humaneval, mbpp
from phi1.evals import run as run_lib
from phi1.evals.passk import pass_at_k

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = humaneval.load()[:4]


def _write(path, rows):
  with open(path, "wb") as f:
    for row in rows:
      f.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")


def _last_json_line(text):
  return json.loads(text.strip().splitlines()[-1])


def test_samples_file_through_the_module_entry_point(tmp_path):
  rows = []
  for t in reversed(TASKS):  # out of order on purpose: results come back sorted
    rows += [dict(task_id=t.task_id, completion="    pass\n", sample_id=1),
             dict(task_id=t.task_id, completion=t.reference, sample_id=0)]
  _write(tmp_path / "samples.jsonl", rows)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "phi1.evals.cli", "--bench", "humaneval", "--samples",
       str(tmp_path / "samples.jsonl"), "--limit", "4", "--out", str(out), "--workers", "2"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stderr
  summary = _last_json_line(proc.stdout)
  assert summary["pass@1"] == pass_at_k(2, 1, 1) and summary["pass@2"] == pass_at_k(2, 1, 2)
  assert summary["statuses"] == {"passed": 4, "failed": 4}
  protocol = summary["protocol"]
  assert protocol["dataset"]["sha256"] and protocol["dataset"]["num_tasks"] == 4
  assert protocol["timeout_s"] == 3.0 and "executing" in proc.stderr  # the progress bar
  written = [json.loads(line) for line in open(out / "samples.jsonl")]
  assert [(r["task_id"], r["sample_id"]) for r in written] == \
      [(t.task_id, i) for t in TASKS for i in (0, 1)]
  assert [r["passed"] for r in written] == [True, False] * 4
  assert set(written[0]) >= {"task_id", "completion", "status", "error", "duration_s"}
  assert json.load(open(out / "summary.json"))["pass@1"] == summary["pass@1"]


def test_bad_samples_are_reported_per_sample_never_fatal(tmp_path, capsys):
  t0, t1, t2 = TASKS[:3]
  rows = [dict(task_id="HumanEval/9999", completion="    return 1\n"),
          dict(task_id=t0.task_id),
          b"this is not json\n",
          b'{"task_id": "' + t0.task_id.encode() + b'", "completion": "    return \xff\xfe\\n"}\n',
          dict(task_id=t0.task_id, completion=["not", "a", "string"]),
          dict(task_id=t1.task_id, completion=""),
          dict(task_id=t2.task_id, completion="    # " + "x" * (10 << 20) + "\n" + t2.reference)]
  _write(tmp_path / "bad.jsonl", rows)
  rc = cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "bad.jsonl"), "--out",
                 str(tmp_path / "out"), "--no-progress", "--timeout", "10", "--allow-missing"])
  captured = capsys.readouterr()
  assert rc == 0
  summary = _last_json_line(captured.out)
  assert summary["num_rejected"] == 4 and "rejected" in captured.err
  reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out" / "rejected.jsonl")]
  assert [r.split(" ")[0] for r in reasons] == ["unknown", "missing", "not", "completion"]
  by_task = {json.loads(line)["task_id"]: json.loads(line)
             for line in open(tmp_path / "out" / "samples.jsonl")}
  assert by_task[t0.task_id]["status"] == "error" and "Unicode" in by_task[t0.task_id]["error"]
  assert not by_task[t1.task_id]["passed"]  # an empty body: the docstring alone returns None
  assert by_task[t2.task_id]["passed"]      # 10 MB of comment, then the real solution
  assert summary["num_tasks_without_samples"] == 164 - 3 and summary["num_tasks"] == 164


class _FakeServer(http.server.BaseHTTPRequestHandler):
  """Answers completions with the canonical solution plus trailing junk the stops must cut."""
  answers = {t.prompt: t.reference for t in TASKS}
  requests: list = []

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    _FakeServer.requests.append((self.path, self.headers.get("Authorization"), body))
    if self.path.endswith("/chat/completions"):
      prompt = body["messages"][-1]["content"].split("\n\n", 1)[1]
      text = f"Sure:\n```python\n{prompt}{self.answers[prompt]}```\nDone."
      choice = dict(index=0, message=dict(role="assistant", content=text), finish_reason="stop")
    else:
      text = self.answers[body["prompt"]] + "\n\ndef unrelated():\n    return undefined_name\n"
      choice = dict(index=0, text=text, finish_reason="stop", logprobs=None)
    data = json.dumps(dict(id="x", object="text_completion", created=0, model=body["model"],
                           choices=[choice], usage=dict(prompt_tokens=1, completion_tokens=1,
                                                        total_tokens=2))).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture()
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  _FakeServer.requests.clear()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  httpd.shutdown()


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_openai_compatible_server(server, tmp_path, capsys, monkeypatch, chat):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-key-never-on-disk")
  out = tmp_path / "out"
  rc = cli.main(["--bench", "humaneval", "--openai-base-url", server, "--model", "tiny",
                 "--limit", "4", "--out", str(out), "--no-progress", "--max-new-tokens", "300"]
                + (["--chat"] if chat else []))
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  summary = _last_json_line(captured.out)
  assert summary["pass@1"] == 1.0
  assert summary["protocol"]["generator"]["model"] == "tiny"
  assert summary["protocol"]["sampling"]["max_new_tokens"] == 300
  assert len(_FakeServer.requests) == 4
  path, auth, body = _FakeServer.requests[0]
  assert path.endswith("/chat/completions" if chat else "/completions")
  assert auth == "Bearer sk-secret-key-never-on-disk" and body["max_tokens"] == 300
  for name in os.listdir(out):
    assert "sk-secret-key" not in (out / name).read_text()
  assert "sk-secret-key" not in captured.out + captured.err


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
  """Runs without --out write a new eval_runs/ directory into the working directory."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_clear_errors_for_bad_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["--bench", "humaneval", "--openai-base-url", "http://x/v1"])  # no --model
  assert "--model" in capsys.readouterr().err
  rc = cli.main(["--bench", "mbpp", "--samples", "x.jsonl", "--data", str(tmp_path / "none.jsonl")])
  assert rc == 2 and "not found" in capsys.readouterr().err
  rc = cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "missing.jsonl")])
  assert rc == 2 and "not found" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(mbpp.default_path()), reason="MBPP data not found")
def test_mbpp_samples_with_integer_task_ids(tmp_path, capsys, in_tmp):
  tasks = mbpp.load(split="test")[:3]
  rows = [dict(task_id=int(t.task_id.split("/")[1]), completion=t.reference) for t in tasks]
  _write(tmp_path / "mbpp.jsonl", rows)
  rc = cli.main(["--bench", "mbpp", "--samples", str(tmp_path / "mbpp.jsonl"), "--limit", "3",
                 "--no-progress"])
  summary = _last_json_line(capsys.readouterr().out)
  assert rc == 0 and summary["pass@1"] == 1.0
  assert summary["protocol"]["dataset"]["split"] == "test"


def test_checkpoint_path_calls_generate_with_the_protocol(tmp_path, capsys, monkeypatch, in_tmp):
  """Wiring only (no JAX here): load_for_inference(dir), then one batched generate call."""
  import types
  calls = {}
  answers = {t.prompt: t.reference + "\ndef junk():\n    return undefined\n" for t in TASKS}

  model = types.SimpleNamespace(config=types.SimpleNamespace(max_seq_len=64 + 400))
  tokenizer = types.SimpleNamespace(encode=list)  # a token per character

  def load_for_inference(path):
    calls["path"] = path
    return model, tokenizer

  def generate(model, tokenizer, prompts, **kwargs):
    calls.update(kwargs, n_prompts=len(prompts))
    return [answers[p] for p in prompts]

  monkeypatch.setitem(sys.modules, "phi1.checkpoint",
                      types.SimpleNamespace(load_for_inference=load_for_inference))
  monkeypatch.setitem(sys.modules, "phi1.generate", types.SimpleNamespace(generate=generate))
  rc = cli.main(["--bench", "humaneval", "--checkpoint", str(tmp_path), "--limit", "4", "--n", "2",
                 "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "64",
                 "--no-progress"])
  summary = _last_json_line(capsys.readouterr().out)
  assert rc == 0 and summary["pass@1"] == 1.0 and summary["pass@2"] == 1.0
  assert calls["path"] == str(tmp_path) and calls["n_prompts"] == 8
  assert (calls["max_new_tokens"], calls["temperature"], calls["top_p"]) == (64, 0.8, 0.95)
  assert calls["stop"] == list(summary["protocol"]["stops"]) and "\ndef" in calls["stop"]
  assert summary["protocol"]["generator"]["kind"] == "checkpoint"
  # Prompts longer than the context leaves (464 - 64 new tokens) lose their start, on the record.
  assert calls["truncate"] == "left"
  too_long = 2 * sum(len(t.prompt) > 400 for t in TASKS[:4])
  assert 0 < too_long < 8
  assert summary["protocol"]["generator"]["prompts_truncated_left"] == too_long


def test_limit_skips_other_problems_quietly(tmp_path, capsys, in_tmp):
  everything = humaneval.load()
  _write(tmp_path / "all.jsonl", [dict(task_id=t.task_id, completion=t.reference) for t in everything])
  rc = cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "all.jsonl"), "--limit", "3",
                 "--no-progress"])
  captured = capsys.readouterr()
  summary = _last_json_line(captured.out)
  assert rc == 0 and summary["num_samples"] == 3 and summary["num_rejected"] == 0
  assert summary["protocol"]["dataset"]["limit"] == 3 and "rejected" not in captured.err


def test_unreachable_server_is_a_clear_error(tmp_path, capsys, in_tmp):
  rc = cli.main(["--bench", "humaneval", "--openai-base-url", "http://127.0.0.1:9/v1", "--model",
                 "m", "--limit", "2", "--no-progress", "--max-attempts", "2"])
  error = capsys.readouterr().err
  assert rc == 1 and "generation failed: GenerationFailed" in error
  assert "HumanEval/0 sample 0" in error or "HumanEval/1 sample 0" in error
  assert "connection failed" in error and "rerun the same command to resume" in error


def test_three_of_164_correct_is_refused_naming_the_missing_problems(tmp_path, capsys):
  everything = humaneval.load()
  _write(tmp_path / "three.jsonl",
         [dict(task_id=t.task_id, completion=t.reference) for t in everything[:3]])
  args = ["--bench", "humaneval", "--samples", str(tmp_path / "three.jsonl"), "--no-progress",
          "--out", str(tmp_path / "out")]
  rc = cli.main(args)
  captured = capsys.readouterr()
  assert rc == 2 and captured.out == "" and not (tmp_path / "out").exists()
  error = captured.err.strip().splitlines()[-1]
  assert "161 of 164 selected problems have no samples: HumanEval/3, HumanEval/4" in error
  assert "--allow-missing" in error

  rc = cli.main(args + ["--allow-missing"])
  captured = capsys.readouterr()
  summary = _last_json_line(captured.out)
  assert rc == 0 and summary["pass@1"] == pytest.approx(3 / 164)
  assert summary["num_tasks"] == 164 and summary["num_tasks_scored"] == 3
  assert summary["missing_counted_as_failed"][:2] == ["HumanEval/3", "HumanEval/4"]
  assert "161 of 164 problems had no samples and count as failed" in summary["note"]
  assert summary["note"] in captured.err
  problems = [json.loads(line) for line in open(tmp_path / "out" / "problems.jsonl")]
  assert len(problems) == 164 and [p["pass@1"] for p in problems[:4]] == [1.0, 1.0, 1.0, 0.0]
  assert problems[3] == dict(task_id="HumanEval/3", samples=0, passed=0, missing=True,
                             **{"pass@1": 0.0})


def test_ids_match_forgivingly_and_typos_get_a_suggestion(tmp_path, capsys):
  t0, t1, t2, t3 = TASKS
  rows = [dict(task_id="humaneval/0", completion=t0.reference),
          dict(task_id="HumanEval_1", completion=t1.reference),
          dict(task_id=2, completion=t2.reference),   # a bare number: HumanEval has one problem 2
          dict(task_id="HumanEvl/3", completion=t3.reference)]
  _write(tmp_path / "ids.jsonl", rows)
  rc = cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "ids.jsonl"), "--limit", "4",
                 "--no-progress", "--out", str(tmp_path / "out"), "--allow-missing"])
  captured = capsys.readouterr()
  summary = _last_json_line(captured.out)
  assert rc == 0 and summary["num_tasks_scored"] == 3 and summary["pass@1"] == 0.75
  rejected = [json.loads(line) for line in open(tmp_path / "out" / "rejected.jsonl")]
  assert rejected == [dict(line=4, task_id="HumanEvl/3", reason="unknown task_id 'HumanEvl/3' (or "
                           "not in the selected split); did you mean 'HumanEval/3'?")]
  assert "did you mean 'HumanEval/3'" in captured.err


def test_evalplus_solution_rows_are_whole_programs(tmp_path, capsys):
  t0, t1 = TASKS[:2]
  rows = [dict(task_id=t0.task_id, solution=t0.prompt + t0.reference),
          dict(task_id=t1.task_id, solution=t1.reference)]  # a body alone is not a program
  _write(tmp_path / "plus.jsonl", rows)
  rc = cli.main(["--bench", "humaneval", "--samples", str(tmp_path / "plus.jsonl"), "--limit", "2",
                 "--no-progress", "--out", str(tmp_path / "out")])
  assert rc == 0 and _last_json_line(capsys.readouterr().out)["pass@1"] == 0.5
  written = [json.loads(line) for line in open(tmp_path / "out" / "samples.jsonl")]
  assert [r["passed"] for r in written] == [True, False] and "solution" in written[0]


def test_results_always_go_to_a_new_directory(tmp_path, capsys, in_tmp):
  _write(tmp_path / "s.jsonl", [dict(task_id=t.task_id, completion=t.reference) for t in TASKS[:2]])
  args = ["--bench", "humaneval", "--samples", str(tmp_path / "s.jsonl"), "--limit", "2",
          "--no-progress"]
  assert cli.main(args) == 0 and cli.main(args) == 0
  outs = [json.loads(line)["out_dir"] for line in capsys.readouterr().out.splitlines()
          if line.startswith("{")]
  assert len(set(outs)) == 2 and all(o.startswith("eval_runs/humaneval-") for o in outs)
  for out in outs:
    assert json.load(open(in_tmp / out / "summary.json"))["pass@1"] == 1.0
    assert len((in_tmp / out / "problems.jsonl").read_text().splitlines()) == 2


@pytest.mark.skipif(not os.path.exists(mbpp.default_path()), reason="MBPP data not found")
def test_mbpp_id_spellings(tmp_path):
  tasks = mbpp.load(split="test")[:3]
  _write(tmp_path / "m.jsonl", [dict(task_id="mbpp_11", completion=""),
                                dict(task_id="Mbpp/012", completion=""),
                                dict(task_id="13", completion=""),
                                dict(task_id="Mbpp/5", completion="")])
  samples, rejected = run_lib.read_samples(str(tmp_path / "m.jsonl"), tasks)
  assert [s.task_id for s in samples] == ["Mbpp/11", "Mbpp/12", "Mbpp/13"]
  assert rejected[0]["reason"].startswith("unknown task_id 'Mbpp/5' (or not in the selected split)")


def test_evaluate_is_the_command_as_a_function_returning_its_summary(tmp_path, capsys):
  _write(tmp_path / "s.jsonl", [dict(task_id=t.task_id, completion=t.reference) for t in TASKS[:2]]
         + [dict(task_id=TASKS[2].task_id, completion="    pass\n")])
  summary = cli.evaluate("humaneval", samples=str(tmp_path / "s.jsonl"), limit=3,
                         out=str(tmp_path / "out"), no_progress=True)
  assert summary["pass@1"] == pytest.approx(2 / 3) and summary["num_tasks"] == 3
  assert "pass@1" not in capsys.readouterr().out  # returned, not printed
  with pytest.raises(cli.EvalFailed, match="have no samples") as e:
    cli.evaluate("humaneval", samples=str(tmp_path / "s.jsonl"), limit=4, out=str(tmp_path / "o2"))
  assert e.value.code == 2
  with pytest.raises(cli.UsageError, match="needs --model"):
    cli.evaluate("humaneval", openai_base_url="http://127.0.0.1:9/v1")
  with pytest.raises(TypeError, match="unknown options"):
    cli.evaluate("humaneval", checkpoints="x")
