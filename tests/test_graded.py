"""The graded bench (paper §4): shipped problems checked in the sandbox, score parsing, and the whole
harness end to end against the loopback OpenAI server (generator and grader)."""

import json

import pytest

from data_gen.testing import FakeOpenAI
from phi1.evals import cli, graded
from phi1.evals.sandbox import Sandbox

TASKS, RUBRICS = graded.load()
BY_PROMPT = {t.prompt: i for i, t in enumerate(TASKS)}
WRONG = "    return None\n"


def test_shipped_references_pass_their_tests_and_a_wrong_answer_fails_them():
  assert len(TASKS) == 10 and all(t.test and t.reference and RUBRICS[t.task_id] for t in TASKS)
  with Sandbox(timeout_s=5.0) as sandbox:
    right = sandbox.run([t.program(t.reference) for t in TASKS])
    wrong = sandbox.run([t.program(WRONG) for t in TASKS])
  assert [r.status for r in right] == ["passed"] * len(TASKS), [r.error for r in right]
  assert not any(r.passed for r in wrong)


@pytest.mark.parametrize("reply, score", [
    ("Correct and clear.\nScore: 9", 9.0), ("score = 7/10", 7.0), ("Score: 3\n...\nScore: 4", 4.0),
    ("Score: 12", 10.0), ("no number here", None), ("Score: 6.5", 6.5)])
def test_parse_score(reply, score):
  assert graded.parse_score(reply) == score


def test_bad_problem_files_are_refused(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"id": "a", "prompt": "def f():\n"}) + "\n")
  with pytest.raises(ValueError, match="reference solution or rubric"):
    graded.load(str(path))


def respond(body: dict) -> str:
  if "messages" in body:  # the grader: 9 for a student's solution equal to the reference, else 2
    content = body["messages"][-1]["content"]
    student = content.split("The student's solution:")[1]
    right = any(t.prompt + t.reference in student for t in TASKS)
    return "Matches the reference.\nScore: 9" if right else "Returns None.\nScore: 2"
  i = BY_PROMPT[body["prompt"]]  # the model under test: right on even problems, wrong on odd
  return TASKS[i].reference if i % 2 == 0 else WRONG


def test_graded_bench_end_to_end_against_the_loopback_server(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  with FakeOpenAI(responder=respond) as server:
    argv = ["--bench", "graded", "--openai-base-url", server.base_url, "--model", "student",
            "--grader-model", "teacher", "--grader-base-url", server.base_url,
            "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sent = sum(server.request_counts.values())
    assert sent == 2 * len(TASKS)  # one generation and one grading per problem
    # A rerun reuses the saved generations and the grader's cached answers: nothing is sent.
    assert cli.main(argv) == 0
    assert sum(server.request_counts.values()) == sent
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["graded_score_percent"] == pytest.approx((5 * 9 + 5 * 2) / 10 * 10)
  assert summary["pass@1"] == 0.5 and summary["graded_unparsable"] == 0
  assert summary["grader"]["model"] == "teacher" and summary["grader"]["params"]["temperature"] == 0
  assert again["graded_score_percent"] == summary["graded_score_percent"]
  assert again["grader"]["cache_hits"] == len(TASKS)
  rows = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
  assert sorted(r["score"] for r in rows) == [2.0] * 5 + [9.0] * 5
  assert json.loads((tmp_path / "summary.json").read_text())["graded_num"] == len(TASKS)


def test_graded_needs_a_grader(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--bench", "graded", "--samples", "x.jsonl"])
  assert "--grader-model" in capsys.readouterr().err


def test_grader_budget_stops_before_it_is_exceeded_and_the_rerun_pays_only_the_rest(tmp_path,
                                                                                      capsys,
                                                                                      monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  with FakeOpenAI(responder=respond) as server:
    argv = lambda budget: ["--bench", "graded", "--openai-base-url", server.base_url, "--model",
                           "student", "--grader-model", "gpt-4o-mini", "--grader-base-url",
                           server.base_url, "--grader-budget-usd", str(budget), "--concurrency",
                           "1", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv(0.0012)) == 1  # a few grades' worth (each reserves its worst case first)
    err = capsys.readouterr().err
    assert "budget" in err and "Traceback" not in err
    graded_first = sum(server.request_counts.values()) - len(TASKS)  # after the 10 generations
    assert 0 < graded_first < len(TASKS)
    # The grades that were paid for are cached: a rerun with room to spare pays only for the rest.
    assert cli.main(argv(1.0)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(server.request_counts.values()) == 2 * len(TASKS)
  assert summary["grader"]["cache_hits"] == graded_first and summary["graded_num"] == len(TASKS)
  assert 0 < summary["grader"]["cost_usd"] <= 1.0
