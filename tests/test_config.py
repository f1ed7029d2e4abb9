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
