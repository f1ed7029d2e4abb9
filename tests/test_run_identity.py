"""A workdir remembers the config its checkpoints came from: changed configs are refused with the
keys named, unless restarted or continued on the record; steps may grow."""

import json

import pytest

from phi1 import cli, metrics, run_identity, train
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)


def _fake_checkpoint(workdir, step):
  (workdir / "checkpoints" / str(step)).mkdir(parents=True)


def test_changed_config_is_refused_naming_the_key(corpus, tmp_path):  # noqa: F811
  run_identity.check_and_record(tmp_path, tiny_config(corpus))
  _fake_checkpoint(tmp_path, 5)
  changed = tiny_config(corpus, **{"optimizer.peak_lr": 1e-3, "log_every": 3})
  with pytest.raises(run_identity.ConfigChanged) as e:
    run_identity.check_and_record(tmp_path, changed)
  assert "optimizer.peak_lr: 0.003 -> 0.001" in str(e.value) and "log_every" not in str(e.value)
  assert "--restart" in str(e.value) and "--continue-with-changes" in str(e.value)
  # A bookkeeping change alone (when to log) is allowed, and recorded.
  events = run_identity.check_and_record(tmp_path, tiny_config(corpus, log_every=3))
  assert [e["event"] for e in events] == ["bookkeeping_changed"]


def test_continue_with_changes_is_recorded_and_restart_moves_the_old_run_aside(corpus, tmp_path):  # noqa: F811
  run_identity.check_and_record(tmp_path, tiny_config(corpus))
  _fake_checkpoint(tmp_path, 5)
  changed = tiny_config(corpus, **{"optimizer.peak_lr": 1e-3})
  run_identity.check_and_record(tmp_path, changed, on_change="continue")
  record = json.loads((tmp_path / "identity.json").read_text())
  assert record["config_hash"] == run_identity.config_hash(changed)
  last = record["history"][-1]
  assert last["event"] == "continue_with_changes" and last["at_step"] == 5
  assert last["changes"] == {"optimizer.peak_lr": [0.003, 0.001]}
  run_identity.check_and_record(tmp_path, changed)  # the same config again: no conflict

  with pytest.raises(run_identity.ConfigChanged, match="different architecture.*model.d_model"):
    run_identity.check_and_record(tmp_path, tiny_config(corpus, **{"model.d_model": 64}),
                                  on_change="continue")
  run_identity.check_and_record(tmp_path, tiny_config(corpus, seed=1), on_change="restart")
  assert not (tmp_path / "checkpoints").exists()
  moved = list((tmp_path / "superseded").iterdir())
  assert len(moved) == 1 and (moved[0] / "checkpoints" / "5").is_dir()
  assert json.loads((tmp_path / "identity.json").read_text())["history"][-1]["event"] == "restart"


def test_checkpoint_past_a_shorter_end_is_refused(corpus, tmp_path):  # noqa: F811
  run_identity.check_and_record(tmp_path, tiny_config(corpus, steps=10))
  _fake_checkpoint(tmp_path, 10)
  with pytest.raises(run_identity.ConfigChanged, match="steps=5 but a checkpoint at step 10"):
    run_identity.check_and_record(tmp_path, tiny_config(corpus, steps=5))


def test_a_real_run_refuses_a_changed_lr_and_extends_its_steps(corpus, tmp_path, capsys):  # noqa: F811
  workdir = tmp_path / "run"
  train.run(tiny_config(corpus, steps=4, checkpoint_every=2), workdir, progress=False)
  # The same through `phi1 train`: one line naming the key, no traceback, nothing trained.
  cfg_file = tmp_path / "exp.py"
  cfg_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom test_train import tiny_config\n"
      "def get_config():\n  return tiny_config(%r, steps=4, checkpoint_every=2)\n"
      % (str(__import__("pathlib").Path(__file__).parent), corpus))
  capsys.readouterr()
  code = cli.main(["train", "--config", str(cfg_file), "--workdir", str(workdir), "--no-progress",
                   "--config.optimizer.peak_lr=1e-3"])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert "optimizer.peak_lr: 0.003 -> 0.001" in err and "Traceback" not in err

  train.run(tiny_config(corpus, steps=6, checkpoint_every=2), workdir, progress=False)
  steps = [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]
  history = json.loads((workdir / "identity.json").read_text())["history"]
  assert [h["event"] for h in history] == ["start", "steps_changed"]
  assert history[1]["steps"] == [4, 6] and history[1]["at_step"] == 4


def _own_corpus(corpus, tmp_path, lines=30):
  """A private copy of the first `lines` documents of the test corpus (so it can be topped up)."""
  path = tmp_path / "data" / "train.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = open(corpus["train"]).read().splitlines()
  path.write_text("\n".join(rows[:lines]) + "\n")
  return dict(corpus, train=str(path)), rows


def test_topped_up_data_is_refused_naming_the_source_and_undoes_done(corpus, tmp_path, capsys):  # noqa: F811
  own, rows = _own_corpus(corpus, tmp_path)
  workdir = tmp_path / "run"
  config = tiny_config(own, steps=5)
  run_identity.check_and_record(workdir, config)
  _fake_checkpoint(workdir, 5)
  (workdir / run_identity.DONE).write_text(json.dumps({"config_hash": run_identity.config_hash(
      config)}))
  assert run_identity.is_done(workdir, config)
  with open(own["train"], "a") as f:  # topped up: 30 -> 80 documents, same path, same config
    f.write("\n".join(rows[30:80]) + "\n")
  assert not run_identity.is_done(workdir, config)
  assert "data source 'source0'" in run_identity.status(workdir, config)
  with pytest.raises(run_identity.ConfigChanged, match=r"data source 'source0' \(.*train.jsonl\) "
                                                       "changed"):
    run_identity.check_and_record(workdir, config)
  # `phi1 train` says it in one line; --continue-with-changes accepts it, on the record.
  cfg_file = tmp_path / "exp.py"
  cfg_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom test_train import tiny_config\n"
      "def get_config():\n  return tiny_config(%r, steps=5)\n"
      % (str(__import__("pathlib").Path(__file__).parent), own))
  code = cli.main(["train", "--config", str(cfg_file), "--workdir", str(workdir), "--no-progress"])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1 and "data source 'source0'" in err
  events = run_identity.check_and_record(workdir, config, on_change="continue")
  assert "data source 'source0'" in capsys.readouterr().out
  assert [e["event"] for e in events] == ["continue_with_changes"]
  assert list(events[0]["data"]) == [f"data source 'source0' ({own['train']})"]
  run_identity.check_and_record(workdir, config)  # recorded: the same data again is no change


def test_extending_steps_restretches_a_schedule_that_follows_them(corpus, tmp_path, capsys):  # noqa: F811
  following = {"optimizer.schedule_steps": 0}
  run_identity.check_and_record(tmp_path, tiny_config(corpus, steps=30, **following))
  _fake_checkpoint(tmp_path, 30)
  longer = tiny_config(corpus, steps=45, **following)
  with pytest.raises(run_identity.ConfigChanged, match="LR schedule: 30 steps -> 45 steps"):
    run_identity.check_and_record(tmp_path, longer)
  # Keeping the old schedule's length extends the run on its own schedule: allowed.
  kept = tiny_config(corpus, steps=45, **{"optimizer.schedule_steps": 30})
  assert [e["event"] for e in run_identity.check_and_record(tmp_path, kept)] == ["steps_changed"]
  run_identity.check_and_record(tmp_path, tiny_config(corpus, steps=30, **following))
  events = run_identity.check_and_record(tmp_path, longer, on_change="continue")
  assert "LR schedule: 30 steps -> 45 steps" in capsys.readouterr().out
  assert events[0]["schedule"] == [30, 45]


def test_restart_moves_the_old_weights_evaluations_aside(corpus, tmp_path):  # noqa: F811
  run_identity.check_and_record(tmp_path, tiny_config(corpus))
  _fake_checkpoint(tmp_path, 5)
  (tmp_path / "eval_humaneval").mkdir()
  (tmp_path / "eval_humaneval" / "summary.json").write_text("{}")
  run_identity.check_and_record(tmp_path, tiny_config(corpus, seed=3), on_change="restart")
  assert not (tmp_path / "eval_humaneval").exists()
  assert list((tmp_path / "superseded").glob("*/eval_humaneval/summary.json"))


def test_a_finetune_whose_init_from_export_was_retrained_is_refused(corpus, tmp_path):  # noqa: F811
  export = tmp_path / "base" / "export"
  (export / "params").mkdir(parents=True)
  (export / "phi1_config.json").write_text("{}")
  (export / "params" / "d").write_bytes(b"base model")
  config = tiny_config(corpus, init_from=str(export))
  run_identity.check_and_record(tmp_path / "ft", config)
  _fake_checkpoint(tmp_path / "ft", 5)
  (export / "params" / "d").write_bytes(b"another base model")
  with pytest.raises(run_identity.ConfigChanged, match=r"init_from \(.*export\) changed"):
    run_identity.check_and_record(tmp_path / "ft", config)
