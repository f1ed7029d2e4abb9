"""Kept training checkpoints as models: `load_for_inference(workdir, step=N)` and
`phi1 eval --checkpoint WORKDIR --step N`."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from phi1 import checkpoint, run_identity, train
from phi1.evals import cli
from test_train import corpus, tiny_config  # noqa: F401  (corpus is a fixture)


@pytest.fixture(scope="module")
def workdir(corpus, tmp_path_factory):  # noqa: F811
  out = tmp_path_factory.mktemp("run")
  train.run(tiny_config(corpus, steps=4, checkpoint_every=2, log_every=2), out, progress=False)
  return out


def _params(model):
  return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_a_kept_step_loads_as_that_steps_model(workdir):
  assert run_identity.kept_steps(workdir) == [2, 4]
  final, _ = checkpoint.load_for_inference(workdir)  # the export, written at the last step
  step4, tok = checkpoint.load_for_inference(workdir, step=4)
  step2, _ = checkpoint.load_for_inference(workdir, step=2)
  assert step4.config == final.config and tok.vocab_size > 0
  for a, b in zip(_params(step4), _params(final)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(_params(step2), _params(final)))


def test_eval_at_a_step_and_a_step_that_was_not_kept(workdir, tmp_path, capsys):
  args = ["--bench", "humaneval", "--checkpoint", str(workdir), "--limit", "2",
          "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "out")]
  assert cli.main(args + ["--step", "3"]) == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert "no checkpoint for step 3" in error and "kept steps: [2, 4]" in error
  rc = cli.main(args + ["--step", "2"])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rc == 0 and summary["protocol"]["generator"]["step"] == 2
  assert summary["num_tasks"] == 2 and summary["pass@1"] == 0.0


def test_an_export_whose_architecture_does_not_match_says_so(workdir, tmp_path, capsys):
  import shutil
  from phi1 import cli as phi1_cli
  bad = tmp_path / "bad_export"
  shutil.copytree(workdir / "export", bad)
  config = json.loads((bad / checkpoint.EXPORT_CONFIG).read_text())
  (bad / checkpoint.EXPORT_CONFIG).write_text(json.dumps({**config, "n_layers": 3}))
  with pytest.raises(ValueError, match="do not fit the architecture") as e:
    checkpoint.load_model(bad)
  assert "partial copy" not in str(e.value) and "missing" in str(e.value)
  code = phi1_cli.main(["generate", "--checkpoint", str(bad), "--prompt", "def f():"])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1 and "do not fit" in err


def test_a_kept_step_of_a_model_fn_run_loads_as_that_model(corpus, tmp_path):  # noqa: F811
  from test_model_fn import SwiGLUPhi1
  out = tmp_path / "swiglu"
  train.run(tiny_config(corpus, steps=2, checkpoint_every=2, **{"model.d_ff": 384}), out,
            progress=False, model_fn=SwiGLUPhi1)
  step2, _ = checkpoint.load_training_step(out, 2)
  assert isinstance(step2, SwiGLUPhi1) and step2.layers[0].mlp.gate.kernel.shape == (128, 384)
  for a, b in zip(_params(step2), _params(checkpoint.load_model(out))):
    np.testing.assert_array_equal(a, b)


def test_listing_kept_steps_loads_no_jax(workdir):
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import sys; from phi1 import run_identity; "
          f"print(run_identity.kept_steps({str(workdir)!r}), "
          "sorted(m for m in ('jax', 'flax', 'orbax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=repo, env={**os.environ, "PYTHONPATH": repo})
  assert out.stdout.strip() == "[2, 4] []"
