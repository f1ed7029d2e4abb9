"""pass@1 is 1 for a model that writes the reference solutions and 0 for one that writes wrong
ones, through the real tokenizer, KV-cache `generate`, stop strings and sandbox: logged during
training, and from the exported checkpoint by `phi1 eval` (offline). The model is scripted
(tests/scripted_model.py); the multi-process eval is in tests/test_multihost.py."""

import json

import pytest

import scripted_model
from phi1 import config as config_lib, metrics, train
from phi1.evals import cli as eval_cli, humaneval
from phi1.tokenizer import load_tokenizer
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

TASKS = 3  # HumanEval/0-2: prompts of up to 288 tokens, completions of up to 202 (512-piece tokenizer)
MAX_NEW = 216


def scripted_config(corpus):  # noqa: F811
  c = tiny_config(corpus, steps=1, checkpoint_every=1,
                  **{"evals.every.humaneval": 1, "evals.limit": TASKS,
                     "evals.max_new_tokens": MAX_NEW, "evals.batch_size": 4,
                     "optimizer.peak_lr": 0.0})  # training must not edit the script
  c.model = config_lib.model_config(scripted_model.config(vocab_size=512))
  return c


@pytest.mark.parametrize("right", [True, False])
def test_scripted_model_scores_pass_at_1_during_training_and_offline(corpus, tmp_path, monkeypatch,  # noqa: F811
                                                                      right):
  tasks = humaneval.load()[:TASKS]
  tokenizer = load_tokenizer(corpus["tokenizer"])
  # The wrong script returns the right type from the right function, and is wrong.
  completions = [t.reference if right else "    return None\n" for t in tasks]
  monkeypatch.setenv(scripted_model.SCRIPT_ENV, scripted_model.write_script(
      tmp_path / "script.json", tokenizer, [t.prompt for t in tasks], completions))
  workdir = tmp_path / "run"
  train.run(scripted_config(corpus), workdir, progress=False, model_fn=scripted_model.ScriptedPhi1)
  logged = [r for r in metrics.read_metrics(workdir) if "humaneval_pass@1" in r]
  assert [r["humaneval_pass@1"] for r in logged] == [1.0 if right else 0.0]

  monkeypatch.delenv(scripted_model.SCRIPT_ENV)  # the export carries the script
  out = tmp_path / "eval"
  assert eval_cli.main(["--bench", "humaneval", "--checkpoint", str(workdir), "--limit", str(TASKS),
                        "--max-new-tokens", str(MAX_NEW), "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["pass@1"] == (1.0 if right else 0.0)
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["completion"] for s in samples] == completions
