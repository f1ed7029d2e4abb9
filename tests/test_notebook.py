"""notebooks/quickstart.ipynb runs top to bottom in this virtual environment's Python (nbclient).

Hermetic: the kernel runs in a temporary directory holding a copy of experiments/ (first on its
PYTHONPATH), so the checkpoints it looks for (`workdir/demo/...` beside the experiments) are never
the checkout's own; the corpus cache is the session's (tests/conftest.py)."""

import json
import os
import pathlib
import shutil
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
  """A `python3` kernelspec that runs this interpreter, found before any other on JUPYTER_PATH."""
  spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "phi1 venv", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  root = tmp_path / "checkout"
  shutil.copytree(REPO / "experiments", root / "experiments",
                  ignore=shutil.ignore_patterns("__pycache__"))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root),
                                                                 os.environ.get("PYTHONPATH")])))
  # The kernel inherits this environment: one CPU device (as a user's laptop), not the 8 fake
  # devices of the test process, and a fresh workdir for the model the notebook trains.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("PHI1_NOTEBOOK_WORKDIR", str(tmp_path / "quickstart"))
  monkeypatch.delenv("PHI1_CHECKPOINT", raising=False)
  return "python3", root


def test_quickstart_runs_top_to_bottom(venv_kernel, tmp_path):
  kernel, root = venv_kernel
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, kernel_name=kernel, timeout=300,
                          resources={"metadata": {"path": str(root)}})
  client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

  streams = [[o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
             for cell in nb.cells if cell.cell_type == "code"]
  assert f"python {sys.executable}" in "".join(streams[0])  # the kernel is this venv's Python
  outputs = "\n".join("".join(s) for s in streams)
  assert "loaded " in outputs and "loss per step:" in outputs
  assert f"trained 30 steps in {tmp_path / 'quickstart'}" in outputs  # not a checkpoint found elsewhere
  images = [o for cell in nb.cells for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # the attention maps and the per-token loss plot


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
      "clear the notebook's outputs before committing (Kernel > Restart & Clear Output)")
