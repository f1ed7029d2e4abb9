"""Package boundaries: phi1 never imports data_gen (manifest.json is their contract; the LLM client
both use lives in phi1.llm), and the LLM client uses only the openai SDK's public API (private
modules and methods change without notice)."""

import ast
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _imported_modules(path: pathlib.Path) -> list[str]:
  names = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.append(node.module or "")
      names += [f"{node.module}.{alias.name}" for alias in node.names]
  return names


def test_no_module_under_phi1_imports_data_gen():
  offenders = {str(p.relative_to(REPO)): name for p in (REPO / "phi1").rglob("*.py")
               for name in _imported_modules(p) if name.split(".")[0] == "data_gen"}
  assert not offenders, f"phi1 must not import data_gen: {offenders}"


def test_importing_the_trainer_and_data_pipeline_loads_no_data_gen():
  code = ("import sys, phi1.train, phi1.data, phi1.data.records, phi1.cli, phi1.evals.cli, "
          "phi1.evals.api_generator, phi1.evals.graded, phi1.llm.client\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'data_gen'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO, env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]"


_PRIVATE_ATTRIBUTE = re.compile(r"\b(?:openai|client|self\.client|_client)\._[a-zA-Z]\w*")


def test_llm_client_and_data_gen_use_only_the_public_openai_api():
  offenders = []
  for path in [*(REPO / "phi1").rglob("*.py"), *(REPO / "data_gen").rglob("*.py")]:
    private_imports = [n for n in _imported_modules(path)
                       if n.split(".")[0] == "openai" and any(p.startswith("_") for p in n.split(".")[1:])]
    private_calls = _PRIVATE_ATTRIBUTE.findall(path.read_text())
    if private_imports or private_calls:
      offenders.append((str(path.relative_to(REPO)), private_imports, private_calls))
  assert not offenders, f"private openai SDK names used: {offenders}"


def test_the_private_api_check_catches_a_private_import(tmp_path):
  sample = tmp_path / "sample.py"
  sample.write_text("from openai._models import FinalRequestOptions\nx = self.client._build_request\n")
  assert "openai._models" in _imported_modules(sample)
  assert _PRIVATE_ATTRIBUTE.findall(sample.read_text()) == ["openai._models",
                                                             "self.client._build_request"]
