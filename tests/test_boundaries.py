"""Package boundaries, read from the source with `ast` (imports inside functions too, relative ones
resolved):
  * no import cycle between files of phi1/, data_gen/, experiments/;
  * layers point down only: phi1 imports neither data_gen nor experiments, data_gen does not import
    experiments (manifest.json is data_gen's contract with phi1; the LLM client both use lives in
    phi1.llm; `phi1 demo` reaches experiments/demo.py through an entry point, not an import);
  * the LLM client uses only the openai SDK's public API (private modules and methods change
    without notice)."""

import ast
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


PACKAGES = ("phi1", "data_gen", "experiments")
LAYER = {"phi1": 0, "data_gen": 1, "experiments": 2}  # a file may import its own layer or lower


def _imported_modules(path: pathlib.Path, module: str = "") -> list[str]:
  """Every module name `path` imports, at any depth of the file; `module` (the file's own dotted
  name) resolves relative imports. `from a import b` yields both `a` and `a.b`."""
  package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
  names = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - node.level + 1] + ([node.module] if node.module else [])
        source = ".".join(base)
      else:
        source = node.module or ""
      names.append(source)
      names += [f"{source}.{alias.name}" for alias in node.names]
  return names


def module_files(root: pathlib.Path = REPO) -> dict[str, pathlib.Path]:
  """{dotted module name: file} for every .py file of the three packages."""
  files = {}
  for package in PACKAGES:
    for path in sorted((root / package).rglob("*.py")):
      parts = list(path.relative_to(root).with_suffix("").parts)
      files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return files


def import_graph(root: pathlib.Path = REPO) -> dict[str, set[str]]:
  """{module: the modules of the three packages it imports} (a name resolves to the longest
  module it starts with: `from phi1 import checkpoint` is phi1.checkpoint, `from phi1 import
  flatten` is phi1)."""
  files = module_files(root)
  graph = {}
  for module, path in files.items():
    targets = set()
    for name in _imported_modules(path, module):
      parts = name.split(".")
      for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in files:
          targets.add(".".join(parts[:end]))
          break
    graph[module] = targets - {module}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each as one cycle
  through its modules when a simple one visits them all, else the component sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]])


def test_no_import_cycle_between_files():
  found = cycles(import_graph())
  assert not found, ("import cycles (each list imports itself around; move the shared piece "
                     f"down a layer): {found}")


def test_layers_import_downward_only():
  found = upward_imports(import_graph())
  assert not found, ("phi1 must not import data_gen or experiments, data_gen must not import "
                     f"experiments: {found}")


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
  for name, text in files.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  for package in PACKAGES:
    (tmp_path / package).mkdir(exist_ok=True)
  return tmp_path


def test_the_checks_catch_a_function_level_cycle_and_an_upward_relative_import(tmp_path):
  root = _tree(tmp_path, {
      "phi1/__init__.py": "", "phi1/a.py": "def f():\n  from phi1 import b\n",
      "phi1/b.py": "from . import c\n", "phi1/c.py": "import phi1.a\n",
      "phi1/ok.py": "from phi1 import flatten\n",
      "data_gen/__init__.py": "", "data_gen/x.py": "from .y import z\n",
      "data_gen/y.py": "def g():\n  import experiments.e\n",
      "experiments/__init__.py": "", "experiments/e.py": "from phi1 import ok\n"})
  graph = import_graph(root)
  assert graph["phi1.b"] == {"phi1", "phi1.c"} and graph["phi1.ok"] == {"phi1"}
  assert graph["data_gen.x"] == {"data_gen.y"}
  assert cycles(graph) == [["phi1.a", "phi1.b", "phi1.c"]]
  assert upward_imports(graph) == ["data_gen.y -> experiments.e"]


def test_phi1_demo_is_the_experiments_command_through_its_entry_point():
  from phi1 import cli
  from experiments import demo
  assert cli.plugin("demo") is demo.main


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


MAX_LINES = 450  # a file over this mixes jobs: split it by job (tests and Pallas kernels excepted)


def test_no_source_file_over_the_line_limit():
  listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                           "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
  too_long = {}
  for name in listed.split():
    path = REPO / name
    if name.startswith("tests/") or "/kernels/" in name or not path.is_file():
      continue
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > MAX_LINES:
      too_long[name] = lines
  assert not too_long, f"files over {MAX_LINES} lines (split each by job): {too_long}"


def test_the_readme_layout_names_files_that_exist():
  """Every file and folder README's layout block names exists where its row says."""
  import glob
  import re
  readme = (REPO / "README.md").read_text()
  block = re.search(r"```\n(phi1/ .*?)```", readme, re.S).group(1)
  rows, row_dir = {}, None
  for line in block.splitlines():
    head = re.match(r"(\S+/)\s", line)
    row_dir = head.group(1) if head else row_dir
    rows[row_dir] = rows.get(row_dir, "") + " " + (line[len(head.group(1)):] if head else line)
  assert {"phi1/", "phi1/evals/", "data_gen/", "experiments/", "tests/"} <= rows.keys()
  missing = []
  for row_dir, text in rows.items():
    assert (REPO / row_dir).is_dir(), f"README layout names {row_dir}, which is not in the tree"
    for name in re.findall(r"(?<![\w/])[\w*]+(?:\.py|\.ipynb|/)(?!\w)", text):  # not "HF import/export"
      if not glob.glob(str(REPO / row_dir / name)):
        missing.append(row_dir + name)
  assert not missing, f"README's layout names files that are not in the tree: {missing}"
