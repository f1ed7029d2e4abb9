"""`phi1`: every subcommand listed, train's help, --print-config, one-line errors (--debug: the
traceback)."""

import pathlib

import pytest

from phi1 import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CPU_DEMO = str(REPO / "experiments" / "cpu_demo.py")


def test_help_lists_every_subcommand_with_a_sentence(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  for name in cli.COMMANDS:
    line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
    assert len(line.split(None, 1)[1]) > 20, line


def test_train_help_explains_overrides_resume_and_print_config(capsys):
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  out = capsys.readouterr().out
  for words in ("--config.KEY=VALUE", "resume", "--print-config", "--restart",
                "--continue-with-changes", "SIGTERM"):
    assert words in out, words


def test_print_config_shows_the_resolved_config(capsys):
  assert cli.main(["train", "--config", CPU_DEMO, "--print-config",
                   "--config.optimizer.peak_lr=0.5"]) == 0
  out = capsys.readouterr().out
  assert "peak_lr: 0.5" in out and "n_layers:" in out


@pytest.mark.parametrize("argv, words", [
    (["train", "--config", CPU_DEMO, "--print-config", "--config.model.n_layer=3"],
     "did you mean 'model.n_layers'"),
    (["train", "--config", "no/such/experiment.py", "--workdir", "x"], "not found"),
    (["generate", "--checkpoint", "/no/such/dir", "--prompt", "x"], "neither a params export"),
])
def test_expected_failures_are_one_line_and_debug_shows_the_traceback(argv, words, capsys):
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err
  with pytest.raises((KeyError, FileNotFoundError)):
    cli.main(argv + ["--debug"])


def test_an_unexpected_failure_is_one_line_with_its_type(monkeypatch, capsys):
  def broken(argv):
    raise TypeError("something\nspanning lines")
  monkeypatch.setitem(cli.COMMANDS, "generate", broken)
  assert cli.main(["generate"]) == 1
  err = capsys.readouterr().err
  assert err.strip() == ("phi1 generate: TypeError: something spanning lines  (--debug shows the "
                         "traceback)")
  with pytest.raises(TypeError):
    cli.main(["generate", "--debug"])
  monkeypatch.setitem(cli.COMMANDS, "generate", lambda argv: (_ for _ in ()).throw(
      KeyboardInterrupt()))
  assert cli.main(["generate"]) == 130
