"""data_gen's corpus stages on a real one-node Slurm cluster (tests/slurm_cluster.py) with
`--executor slurm`: dedup, decontaminate and `filter --preset cpu` queue their job arrays (afterok
per step), and what the jobs write equals the local executor's outputs. A dedup task killed with
`scancel` is redone by the same command, and only it."""

import json
import pathlib
import subprocess
import sys
import time

import pytest

from data_gen import decontaminate as dc, decontaminate_cli, shards
from data_gen.filtering import annotate, cli as filter_cli, dedup, ingest
from data_gen.testing import FakeOpenAI
from slurm_cluster import PARTITION, slurm_cluster  # noqa: F401  (a fixture)
from test_engine import SMALL, _corpus, _outputs

pytestmark = pytest.mark.requires("slurm")
SLURM = ["--executor", "slurm", "--slurm-partition", PARTITION, "--slurm-time", "0:30:00",
         "--mem-per-cpu-gb", "1.5"]


def _completions(stage_dir, step) -> dict[str, int]:
  return {p.name: p.stat().st_mtime_ns
          for p in (stage_dir / "_engine" / step / "completions").glob("*")}


def _array_task_running(cluster, job_name, task) -> str | None:
  """The job id of `job_name`'s array element `task` once it runs."""
  for line in cluster.run("squeue", "-h", "-r", "-n", job_name, "-o", "%i %T").splitlines():
    job, state = line.split()
    if job.endswith(f"_{task}") and state == "RUNNING":
      return job
  return None


def test_dedup_on_slurm_equals_local_and_a_cancelled_task_alone_is_redone(slurm_cluster,
                                                                         tmp_path):  # noqa: F811
  _corpus(tmp_path / "in")
  local = tmp_path / "local"
  assert dedup.main(["--input", str(tmp_path / "in"), "--out", str(local), "--tasks", "2",
                     "--workers", "2", *SMALL]) == 0
  out = tmp_path / "slurm"
  cmd = [sys.executable, "-m", "data_gen", "dedup", "--input", str(tmp_path / "in"), "--out",
         str(out), "--tasks", "2", "--workers", "1", "--slurm-job-name", "dd", *SLURM, *SMALL]
  subprocess.run(cmd, check=True, capture_output=True)
  deadline = time.time() + 300
  while not (killed := _array_task_running(slurm_cluster, "dd-exact_signatures", 1)):
    assert time.time() < deadline, slurm_cluster.run("squeue")
    time.sleep(0.05)
  slurm_cluster.run("scancel", killed)  # rank 1 of the first step, mid-run
  slurm_cluster.wait_idle()  # the later steps are cancelled with it (--kill-on-invalid-dep)
  assert set(_completions(out, "exact_signatures")) == {"00000"}  # rank 1 never finished
  before = _completions(out, "exact_signatures")

  subprocess.run(cmd, check=True, capture_output=True)  # the same command
  ranks = out / "_engine" / "exact_signatures" / "ranks_to_run.json"  # datatrove's array -> ranks
  assert json.loads(ranks.read_text()) == [1]  # a one-element array: the cancelled rank
  slurm_cluster.wait_idle()
  after = _completions(out, "exact_signatures")
  assert set(after) == {"00000", "00001"} and after["00000"] == before["00000"]  # rank 0 kept
  assert _outputs(out) == _outputs(local)


def _decontamination_input(path: pathlib.Path):
  problems = dc.load_problems(["humaneval"])[:6]
  records = [{"id": f"planted:{p.task_id}", "text": p.code, "source": "planted"} for p in problems]
  records += [r for _, r in zip(range(40), ingest.iter_records("stdlib", check_python=False))]
  path.mkdir()
  ingest.write_jsonl(records, path / "records.jsonl")


def _report(out):
  """report.json without its timings, its own directory named OUT."""
  report = json.loads((out / "report.json").read_text().replace(str(out), "OUT"))
  for timing in ("seconds", "records_per_s"):
    report.pop(timing)
  return report


def test_decontaminate_on_slurm_equals_local(slurm_cluster, tmp_path):  # noqa: F811
  _decontamination_input(tmp_path / "in")
  args = ["--input", str(tmp_path / "in"), "--tasks", "2", "--embedder", "none"]
  assert decontaminate_cli.main([*args, "--out", str(tmp_path / "local"), "--workers", "2"]) == 0
  assert decontaminate_cli.main([*args, "--out", str(tmp_path / "slurm"), *SLURM]) == 0
  slurm_cluster.wait_idle()
  local, slurm = _report(tmp_path / "local"), _report(tmp_path / "slurm")
  assert local["taus"]["0.8"]["removed"] >= 6 and slurm == local
  for name in ("flagged.jsonl",):
    assert (tmp_path / "slurm" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
  assert (shards.read_records(str(tmp_path / "slurm" / "pruned" / "tau_0.8"))
          == shards.read_records(str(tmp_path / "local" / "pruned" / "tau_0.8")))


def test_filter_cpu_preset_on_slurm_equals_local(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
  from phi1.tokenizer import train_sentencepiece
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")
  texts = [r["text"] for _, r in zip(range(60), ingest.iter_records("stdlib", check_python=False))]
  train_sentencepiece(texts, tmp_path / "tok.model", vocab_size=512)
  with FakeOpenAI(responder=annotate.offline_judge) as server:
    def run(workdir, *extra):
      return filter_cli.main(["--preset", "cpu", "--input", "stdlib", "--limit", "120",
                              "--workdir", str(workdir), "--base-url", server.base_url,
                              "--sample-size", "80", "--n-estimators", "20",
                              "--tokenizer", str(tmp_path / "tok.model"), "--tasks", "2", *extra])
    assert run(tmp_path / "local", "--workers", "2") == 0
    assert run(tmp_path / "slurm", *SLURM) == 0
    slurm_cluster.wait_idle()
  for path in ("select/selected", "score/scores", "dedup/records"):
    assert (shards.read_records(str(tmp_path / "slurm" / path))
            == shards.read_records(str(tmp_path / "local" / path))), path
  labels = (tmp_path / "slurm" / "annotate" / "labels.jsonl").read_text()
  assert labels == (tmp_path / "local" / "annotate" / "labels.jsonl").read_text()
