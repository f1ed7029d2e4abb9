"""Experiment configs load from any path, whatever the working directory."""

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_an_experiment_file_anywhere_imports_the_project_helpers_and_its_neighbours(tmp_path):
  elsewhere = tmp_path / "my" / "experiments_of_mine"
  elsewhere.mkdir(parents=True)
  (elsewhere / "neighbour.py").write_text("STEPS = 123\n")
  (elsewhere / "x.py").write_text(textwrap.dedent('''
      from experiments import recipes
      from phi1.model import Phi1Config
      import neighbour

      def get_config(arg=""):
        c = recipes.cpu_size(recipes.pretrain(Phi1Config.phi1_small()), "pretrain")
        c.steps = neighbour.STEPS
        return c
  '''))
  # Only `phi1` on the path (no checkout as the working directory, no PYTHONPATH to it).
  site = tmp_path / "site"
  site.mkdir()
  (site / "phi1").symlink_to(REPO / "phi1")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  proc = subprocess.run([sys.executable, "-m", "phi1.cli", "train", "--config",
                         str(elsewhere / "x.py"), "--print-config"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "steps: 123" in proc.stdout


CPU_DEMO = str(REPO / "experiments" / "cpu_demo.py")


def _one_error_line(argv, capsys) -> str:
  from phi1 import cli
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  return err


def test_a_typo_in_an_experiment_file_is_one_line_naming_the_key(tmp_path, capsys):
  exp = tmp_path / "exp.py"
  exp.write_text("from phi1 import config as config_lib\n\n"
                 "def get_config():\n  c = config_lib.base_config()\n"
                 "  c.optimizer.peak_lrr = 1e-3\n  return c\n")
  err = _one_error_line(["train", "--config", str(exp), "--workdir", str(tmp_path / "w")], capsys)
  assert f"{exp}:5" in err and "'peak_lrr'" in err and "did you mean 'optimizer.peak_lr'" in err
  assert not (tmp_path / "w").exists()  # nothing trained, no config.json with both keys


def test_a_replaced_subtree_is_held_to_the_schema_too(tmp_path):
  from phi1 import config as config_lib
  exp = tmp_path / "exp.py"
  exp.write_text("from phi1 import config as config_lib\nfrom phi1.model import Phi1Config\n\n"
                 "def get_config():\n  c = config_lib.base_config()\n"
                 "  c.model = config_lib.model_config(Phi1Config.tiny())\n"
                 "  c.model.n_layer = 3\n  c.sharding_rules = {'embed': 'fsdp'}\n  return c\n")
  try:
    config_lib.load(str(exp))
  except config_lib.UnknownKey as e:
    assert "model.n_layer'" in str(e) and "did you mean 'model.n_layers'" in str(e)
  else:
    raise AssertionError("model.n_layer was accepted")
  exp.write_text(exp.read_text().replace("  c.model.n_layer = 3\n", ""))
  config = config_lib.load(str(exp))  # a free-form mapping (sharding_rules) takes any key
  assert config.sharding_rules.embed == "fsdp" and config.is_locked


def test_a_wrongly_typed_override_is_one_line(capsys):
  err = _one_error_line(["train", "--config", CPU_DEMO, "--print-config", "--config.steps=abc"],
                        capsys)
  assert "--config.steps=abc" in err and "int" in err


def test_wandb_project_without_wandb_is_one_line_at_config_load(monkeypatch, tmp_path, capsys):
  import importlib.util
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else find_spec(name, *a))
  err = _one_error_line(["train", "--config", CPU_DEMO, "--workdir", str(tmp_path / "w"),
                         "--config.wandb_project=phi1"], capsys)
  assert "pip install wandb" in err and not (tmp_path / "w").exists()
