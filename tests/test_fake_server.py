"""`python -m data_gen.fake_server`: the loopback server as a command, for offline rehearsal."""

import os
import re
import subprocess
import sys

import openai
import pytest

from data_gen.filtering import annotate


@pytest.fixture
def served():
  process = subprocess.Popen(
      [sys.executable, "-m", "data_gen.fake_server", "--port", "0", "--rpm", "2", "--window-s",
       "30", "--first-faults", "refusal"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHONPATH": os.getcwd()})
  line = process.stdout.readline()
  match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
  assert match, (line, process.stderr.read() if process.poll() is not None else "")
  yield match.group(1)
  process.terminate()
  process.wait(10)


def test_the_command_serves_faults_rate_limit_headers_and_the_labelling_prompt(served):
  client = openai.OpenAI(base_url=served, api_key="sk-any", max_retries=0)
  refused = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
  assert refused.choices[0].message.content is None and refused.choices[0].message.refusal
  prompt = annotate.prompt_for('def f(x):\n    """Double."""\n    return 2 * x\n')
  raw = client.chat.completions.with_raw_response.create(
      model="m", messages=[{"role": "user", "content": prompt}])
  assert raw.headers["x-ratelimit-remaining-requests"] == "0"
  assert raw.headers["x-ratelimit-limit-requests"] == "2"
  label, _ = annotate.parse_label(raw.parse().choices[0].message.content)
  assert label in (0, 1)
  with pytest.raises(openai.RateLimitError):  # the window's third request
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def test_unknown_faults_are_a_clear_error():
  r = subprocess.run([sys.executable, "-m", "data_gen.fake_server", "--faults", "500,boom"],
                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
  assert r.returncode == 2 and "unknown boom" in r.stderr
