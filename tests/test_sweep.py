"""experiments/sweep.py: run expansion, dry-run arithmetic, SLURM scripts, and a real CPU sweep."""

import contextlib
import io
import json
import pathlib
import re
import textwrap

import pytest

from experiments import grid, plot, registry, sweep
from phi1 import flops
from phi1.model import Phi1Config

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*argv) -> tuple[int, str]:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = sweep.main([str(a) for a in argv])
  return code, out.getvalue()


@pytest.fixture
def experiment(tmp_path):
  """A tiny experiment file with a grid, a dependent run and a family."""
  path = tmp_path / "exp" / "toy.py"
  path.parent.mkdir()
  path.write_text(textwrap.dedent('''
      from phi1 import config as config_lib
      from phi1.model import Phi1Config
      from experiments import grid

      def get_config(arg=""):
        c = config_lib.base_config()
        c.model = config_lib.model_config(Phi1Config.tiny())
        c.steps, c.batch_size, c.seq_len = 10, 8, 64
        return c

      def get_sweep(arg=""):
        runs = grid.grid({"family": "grid"}, model__n_layers=[1, 2], optimizer__peak_lr=[1e-3, 3e-3])
        runs.append({"name": "ft", "init_from": "{run:n_layers-2_peak_lr-0.001}/export", "steps": 5})
        return runs
  '''))
  return path


def test_expand_names_workdirs_overrides_and_dependencies(experiment, tmp_path):
  runs = sweep.expand(str(experiment), tmp_path / "root", {"seed": "7"})
  assert [r.name for r in runs] == ["n_layers-1_peak_lr-0.001", "n_layers-1_peak_lr-0.003",
                                    "n_layers-2_peak_lr-0.001", "n_layers-2_peak_lr-0.003", "ft"]
  assert [r.config.model.n_layers for r in runs[:4]] == [1, 1, 2, 2]
  assert [r.config.optimizer.peak_lr for r in runs[:4]] == [1e-3, 3e-3, 1e-3, 3e-3]
  assert all(r.config.seed == 7 for r in runs)  # --set applies to every run
  assert runs[0].family == "grid" and runs[-1].family == "toy"
  assert runs[0].workdir == (tmp_path / "root" / runs[0].name).absolute()
  ft = runs[-1]
  assert ft.needs == ["n_layers-2_peak_lr-0.001"]
  assert ft.config.init_from == str((tmp_path / "root" / ft.needs[0]).absolute()) + "/export"
  assert ft.config.steps == 5
  assert len({r.config_hash for r in runs}) == 5


def test_bad_sweeps_fail_with_a_reason(tmp_path):
  def write(body):
    path = tmp_path / "bad.py"
    path.write_text("from phi1 import config as config_lib\n"
                    "def get_config(arg=''):\n  return config_lib.base_config()\n" + body)
    return str(path)
  with pytest.raises(ValueError, match=r"did you mean '(model\.)?n_layers'"):
    sweep.expand(write("def get_sweep(arg=''):\n  return [{'model.n_layayers': 2}]\n"), tmp_path)
  with pytest.raises(ValueError, match="unique"):
    sweep.expand(write("def get_sweep(arg=''):\n  return [{'name': 'a'}, {'name': 'a'}]\n"), tmp_path)
  with pytest.raises(ValueError, match="not a run listed before it"):
    sweep.expand(write("def get_sweep(arg=''):\n  return [{'name': 'a', 'init_from': '{run:b}'},"
                       " {'name': 'b'}]\n"), tmp_path)
  with pytest.raises(ValueError, match="divisible"):
    sweep.expand(write("def get_sweep(arg=''):\n  return [{'model.n_heads': 7}]\n"), tmp_path)
  assert run_main(tmp_path / "missing.py", "--dry-run")[0] == 2


def test_dry_run_of_phi1_pretrain_shows_50B_tokens_and_the_gpu_hour_arithmetic():
  code, out = run_main(REPO / "experiments" / "phi1_pretrain.py", "--dry-run",
                       "--reference-gpu-hours", "770")
  assert code == 0
  # 24,000 steps x 1024 sequences x 2048 tokens (paper §2.3: phi-1-base, ~50B tokens).
  assert "24,000 steps x 1,024 seq x 2,048 tokens = 50,331,648,000" in out
  # The FLOPs from first principles (paper §2.3 shapes), not from phi1/flops.py.
  L, d, ff, V, T = 24, 2048, 8192, 51200, 2048
  per_token = 6 * (L * (4 * d * d + 2 * d * ff) + d * V) + 6 * L * T * d
  total = 24_000 * 1024 * 2048 * per_token
  hours = total / (312e12 * 0.4) / 3600
  shown = float(re.search(r"A100-hours .* = ([\d,.]+)  \(", out).group(1).replace(",", ""))
  assert shown == pytest.approx(hours, rel=1e-3)
  assert 500 < hours < 1500  # same order as the paper's 770 A100-hours
  implied = float(re.search(r"means MFU = .* = ([\d.]+)", out).group(1))
  assert implied == pytest.approx(total / (770 * 3600 * 312e12), rel=1e-2)
  assert "6 x N + 6 x L x T x d" in out and "CPU wall" not in out  # not a CPU-sized run


def test_slurm_scripts_use_one_task_per_node_and_dependencies(experiment, tmp_path):
  """Script text only (tests/test_slurm_sweep.py queues and runs them on a real cluster)."""
  code, _ = run_main(experiment, "--root", tmp_path / "root", "--slurm", tmp_path / "slurm",
                     "--nodes", "4", "--eval", "humaneval", "--set", "seed=3",
                     "--signal-grace", "120")
  assert code == 0
  script = (tmp_path / "slurm" / "ft.sbatch").read_text()
  assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=1" in script
  assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --exclusive" in script  # GPU nodes
  assert re.search(r"srun .*-m experiments.sweep .* --only ft", script)
  assert "--set seed=3" in script and "--eval" not in script
  # The preemption contract: requeue, USR1 two minutes early, failed dependencies cancel.
  assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@120" in script
  assert "#SBATCH --kill-on-invalid-dep=yes" in script
  assert 'scontrol requeue "$SLURM_JOB_ID"' in script
  assert 'scancel --signal=TERM "$SLURM_JOB_ID"' in script  # the steps, not srun (-> SIGKILL)
  base = (tmp_path / "slurm" / "n_layers-2_peak_lr-0.001.sbatch").read_text()
  assert "Slurm cancels the runs that need it (--kill-on-invalid-dep): ft" in base
  # Evaluation: its own one-GPU job after training.
  evaluation = (tmp_path / "slurm" / "ft.eval.sbatch").read_text()
  assert "#SBATCH --nodes=1" in evaluation and "#SBATCH --gpus-per-node=1" in evaluation
  assert "--exclusive" not in evaluation and re.search(r"exec .* --only ft .*--eval humaneval",
                                                       evaluation)
  submit = (tmp_path / "slurm" / "submit.sh").read_text()
  assert "afterok" in submit and "JOB[n_layers-2_peak_lr-0.001]" in submit
  assert submit.index("JOB[n_layers-2_peak_lr-0.001]=") < submit.index("JOB[ft]=")
  assert re.search(r"queue ft \S+ eval ft.eval.sbatch .*--dependency=afterok:\$\{JOB\[ft\]\}",
                   submit)


def test_slurm_scripts_for_a_cpu_partition_and_time_limits(experiment, tmp_path):
  code, _ = run_main(experiment, "--root", tmp_path / "root", "--slurm", tmp_path / "cpu",
                     "--gpus-per-node", "0", "--partition", "debug", "--cpus-per-task", "2",
                     "--mem", "4G")
  assert code == 0  # no GPUs: the time comes from this host's measured FLOP/s, not / 0 GPUs
  script = (tmp_path / "cpu" / "ft.sbatch").read_text()
  assert "--gpus-per-node" not in script and "--exclusive" not in script
  assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=4G" in script
  assert "#SBATCH --partition=debug" in script and "CPU node(s) at" in script
  assert "#SBATCH --time=0-00:30:00" in script  # seconds of compute: the half-hour floor
  code, _ = run_main(experiment, "--root", tmp_path / "root", "--slurm", tmp_path / "excl",
                     "--gpus-per-node", "0", "--exclusive", "--time", "2:00:00")
  excl = (tmp_path / "excl" / "ft.sbatch").read_text()
  assert "#SBATCH --exclusive" in excl and "#SBATCH --time=2:00:00" in excl
  assert sweep.slurm.slurm_time(100.0) == "5-05:30:00"  # 100 h + 25% + 30 min
  with pytest.raises(SystemExit):
    run_main(experiment, "--root", tmp_path / "root", "--slurm", tmp_path / "x", "--nodes", "0")


def test_cpu_sweep_trains_fills_the_registry_plots_a_fit_and_skips_finished_runs(tmp_path):
  """4 tiny runs (2 sizes x 2 data mixtures) x 10 steps, from one command."""
  root = tmp_path / "cpu_sweep"
  args = [REPO / "experiments" / "cpu_sweep.py", "--root", root, "--no-progress",
          "--compile-cache", tmp_path / "jax_cache", "--set", "steps=10", "--set", "seq_len=64",
          "--set", "eval_every=2", "--set", "log_every=2", "--set", "checkpoint_every=10",
          "--set", "optimizer.warmup_steps=2", "--set", "optimizer.schedule_steps=10"]
  code, out = run_main(*args)
  assert code == 0, out
  rows = registry.read(root / "registry.csv")
  assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
  assert {r["family"] for r in rows} == {"stdlib", "stdlib+exercises"}
  for row in rows:
    assert row["steps"] == 10 and row["tokens"] == 10 * 8 * 64
    assert row["flops"] == pytest.approx(
        row["tokens"] * flops.train_flops_per_token(
            Phi1Config(**json.loads((pathlib.Path(row["workdir"]) / "config.json").read_text())
                       ["model"]), 64))
    assert 0 < row["best_eval_loss"] <= row["final_eval_loss"] < 9.0  # ln(4096) = 8.3 at init
    assert row["wall_s"] > 0 and row["config_hash"]
  params = {r["d_model"]: r["params"] for r in rows}
  assert params[128] > params[64]

  result = plot.plot([root / "registry.csv"], tmp_path / "plots")
  assert set(result["fits"]) == {"stdlib", "stdlib+exercises"}
  for fit in result["fits"].values():
    assert fit["b"] > 0 and fit["n_points"] >= 3  # loss falls with compute
  for name in ("loss_vs_compute", "loss_vs_tokens"):
    assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 0
    assert (tmp_path / "plots" / f"{name}.svg").stat().st_size > 0

  markers = {p: p.stat().st_mtime_ns for p in root.glob("*/DONE")}
  code, out = run_main(*args)  # a rerun finds every run finished
  assert code == 0 and out.count("skipped") == 4
  assert markers == {p: p.stat().st_mtime_ns for p in root.glob("*/DONE")}


def test_a_finished_run_with_a_changed_config_is_stale_refused_and_not_relabelled(experiment,
                                                                                  tmp_path):
  from phi1 import run_identity
  root = tmp_path / "root"
  run = sweep.expand(str(experiment), root)[0]
  # What a finished sweep run leaves (without training): identity, checkpoint, DONE, run.json.
  run_identity.check_and_record(run.workdir, run.config)
  (run.workdir / "checkpoints" / "10").mkdir(parents=True)
  (run.workdir / "config.json").write_text(run.config.to_json_best_effort())
  (run.workdir / "DONE").write_text(json.dumps({"config_hash": run.config_hash}))
  (run.workdir / "run.json").write_text(json.dumps({"overrides": run.overrides}))
  assert sweep.is_done(run)

  changed = sweep.expand(str(experiment), root, {"seed": "5"})[0]
  assert changed.overrides["seed"] == 5  # typed as the config holds it, not the text "5"
  assert not sweep.is_done(changed)
  code, out = run_main(experiment, "--root", root, "--set", "seed=5", "--only", run.name,
                       "--dry-run")
  assert code == 0 and "STALE: checkpoints up to step 10 come from another config (seed: 0 -> 5)" in out
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code, out = run_main(experiment, "--root", root, "--set", "seed=5", "--only", run.name,
                         "--no-progress")
  assert code == 1 and "seed: 0 -> 5" in err.getvalue() and "--restart" in err.getvalue()
  assert json.loads((run.workdir / "run.json").read_text()) == {"overrides": run.overrides}
  assert registry.run_row(run.workdir)["status"] == "done"
  # Continued with the change: the old DONE no longer describes the workdir.
  run_identity.check_and_record(run.workdir, changed.config, on_change="continue")
  assert registry.run_row(run.workdir)["status"] == "stale"
  assert registry.run_row(run.workdir)["config_hash"] == changed.config_hash


def test_grid_names_tell_every_run_apart():
  long_a = [{"path": "data/a/records.jsonl", "weight": 1.0}]
  long_b = [{"path": "data/a/records.jsonl", "weight": 2.0}]
  runs = grid.grid({"steps": 5}, model__resid_dropout=[0.0, 0.1], data__resid_dropout=[0.0],
                    data__sources=[long_a, long_b], seed=[1])
  names = [r["name"] for r in runs]
  assert len(set(names)) == 4  # the long values shorten alike: a digest separates them
  assert all(n.startswith("model-resid_dropout-") for n in names)  # data.resid_dropout has one value
  assert "seed" not in names[0] and "data-resid_dropout" not in names[0]
  assert runs[0]["data.resid_dropout"] == 0.0 and runs[0]["seed"] == 1


def test_dry_run_shows_differences_missing_paths_and_a_cpu_wall_estimate(tmp_path):
  data = tmp_path / "data.jsonl"
  data.write_text('{"text": "x"}\n')
  path = tmp_path / "exp" / "small.py"
  path.parent.mkdir()
  path.write_text(textwrap.dedent(f'''
      from phi1 import config as config_lib
      from phi1.model import Phi1Config

      def get_config(arg=""):
        c = config_lib.base_config()
        c.model = config_lib.model_config(Phi1Config.tiny())
        c.steps, c.batch_size, c.seq_len = 10, 8, 64
        c.data.sources = [{{"path": {str(data)!r}, "weight": 1.0}}]
        return c

      def get_sweep(arg=""):
        return [{{"name": "base"}},
                {{"name": "lr", "optimizer.peak_lr": 3e-3,
                  "data.sources": [{{"path": {str(tmp_path / "pruned" / "missing.jsonl")!r}}}]}},
                {{"name": "ft", "init_from": "{{run:base}}/export"}},
                {{"name": "ft2", "init_from": {str(tmp_path / "no_such_export")!r}}}]
  '''))
  code, out = run_main(path, "--root", tmp_path / "root", "--dry-run")
  assert code == 0, out
  assert "the runs differ in: data.sources, init_from, optimizer.peak_lr" in out
  blocks = {b.split("  (")[0]: b for b in out.split("\n\n")}
  assert "optimizer.peak_lr=0.003" in blocks["lr"] and "optimizer.peak_lr=0.001" in blocks["base"]
  assert f"MISSING     data.sources[0]: {tmp_path / 'pruned' / 'missing.jsonl'}" in blocks["lr"]
  assert "MISSING" not in blocks["base"] and "MISSING" not in blocks["ft"]  # made by run base
  assert f"MISSING     init_from: {tmp_path / 'no_such_export'}" in blocks["ft2"]
  assert "2 input path(s) missing" in out
  value, unit = re.search(r"CPU wall .* = ([\d.e+-]+) (s|min) \(", blocks["base"]).groups()
  assert 0 < float(value) * (60 if unit == "min" else 1) < 3600


def test_dry_run_plans_each_runs_memory_against_the_gpu(experiment):
  """--plan-memory compiles each run's step for --gpus host devices (phi1 plan) and says whether it
  fits the GPU's memory: the toy runs fit an L4's 24 GB and not 1 MB."""
  code, out = run_main(experiment, "--dry-run", "--plan-memory", "--gpus", "8", "--gpu", "L4",
                       "--only", "n_layers-1_peak_lr-0.001", "--only", "n_layers-2_peak_lr-0.001")
  assert code == 0
  lines = re.findall(r"memory +([\d.e+-]+) GB per device of 24 GB: fits; micro-batch 1 x grad_accum 1 "
                     r"on 8 devices", out)
  assert len(lines) == 2 and all(float(gb) > 0 for gb in lines)
  assert float(lines[1]) > float(lines[0])  # two layers hold more than one
  code, out = run_main(experiment, "--dry-run", "--plan-memory", "--gpus", "8",
                       "--device-memory-gb", "0.001", "--only", "n_layers-1_peak_lr-0.001")
  assert code == 0 and "of 0.001 GB: does NOT fit" in out
