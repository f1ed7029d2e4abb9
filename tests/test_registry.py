"""experiments/registry.py: rows computed from what a run leaves in its workdir; CSV and Parquet."""

import json

import pytest

from experiments import registry
from phi1 import config as config_lib, fingerprint, flops
from phi1.model import Phi1Config, count_params


def fake_run(root, name, *, d_model=64, steps=20, evals=((10, 5.0), (20, 4.5)), done=True,
             pass_at_1=None, info=True):
  """A workdir as train.run + sweep.py + phi1 eval leave it, without training."""
  workdir = root / name
  workdir.mkdir(parents=True)
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config.tiny(d_model=d_model, n_heads=2))
  c.steps, c.batch_size, c.seq_len = steps, 8, 64
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
  lines = [{"step": s, "loss": 6.0 - s / 10, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": tps,
            "mfu": m} for s, tps, m in ((5, 1000.0, 0.1), (10, 3000.0, 0.3), (15, 2000.0, 0.2))]
  lines += [{"step": s, "eval_loss": v} for s, v in evals]
  text = "\n".join(json.dumps(x) for x in lines) + "\n" + '{"step": 16, "lo'  # a cut last line
  (workdir / "metrics.jsonl").write_text(text)
  if info:
    (workdir / "run.json").write_text(json.dumps({
        "name": name, "family": "fam", "experiment": "experiments/x.py",
        "overrides": {"model.d_model": d_model}, "config_hash": "abc123", "wall_s": 12.5}))
  if done:
    (workdir / "DONE").write_text(json.dumps({"config_hash": "abc123", "wall_s": 12.5}))
  if pass_at_1 is not None:  # `phi1 eval --checkpoint WORKDIR/export` of the run's export
    export = workdir / "export"
    (export / "params").mkdir(parents=True)
    (export / "phi1_config.json").write_text("{}")
    (export / "params" / "d").write_bytes(b"weights")
    generator = {"kind": "checkpoint", "path": str(export),
                 "weights": fingerprint.of_weights(str(export))}
    (workdir / "eval_humaneval").mkdir()
    (workdir / "eval_humaneval" / "summary.json").write_text(json.dumps(
        {"pass@1": pass_at_1, "protocol": {"dataset": "humaneval", "n": 1,
                                           "generator": generator}}))
  return workdir, c


def test_row_counts_compute_losses_and_evals(tmp_path):
  workdir, c = fake_run(tmp_path, "a", evals=((10, 5.0), (20, 5.5)), pass_at_1=0.25)
  row = registry.run_row(workdir)
  model = Phi1Config(**c.model)
  assert row["name"] == "a" and row["family"] == "fam" and row["status"] == "done"
  assert row["params"] == count_params(model)
  assert row["steps"] == 20 and row["tokens"] == 20 * 8 * 64
  assert row["flops"] == pytest.approx(20 * 8 * 64 * flops.train_flops_per_token(model, 64))
  assert row["final_eval_loss"] == 5.5
  assert (row["best_eval_loss"], row["best_eval_step"]) == (5.0, 10)
  assert row["final_loss"] == pytest.approx(6.0 - 1.5)
  assert row["tokens_per_sec"] == 2000.0 and row["mfu"] == pytest.approx(0.2)  # medians
  assert row["humaneval_pass@1"] == 0.25
  assert json.loads(row["humaneval_protocol"])["dataset"] == "humaneval"
  assert row["mbpp_pass@1"] is None
  assert json.loads(row["overrides"]) == {"model.d_model": 64}
  assert row["wall_s"] == 12.5 and row["config_hash"] == "abc123"


def test_plain_phi1_train_workdir_gets_a_row(tmp_path):
  workdir, _ = fake_run(tmp_path, "plain", done=False, info=False, steps=30)
  row = registry.run_row(workdir)
  assert row["name"] == "plain" and row["status"] == "partial"  # 20 of 30 steps logged
  assert len(row["config_hash"]) == 12


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_read_round_trip(tmp_path, suffix):
  for name, d in (("small", 64), ("big", 128)):
    fake_run(tmp_path / "sweep", name, d_model=d, pass_at_1=0.5 if d == 128 else None)
  rows = registry.collect([tmp_path / "sweep"])
  assert [r["name"] for r in rows] == ["big", "small"]
  path = registry.write(rows, tmp_path / f"registry{suffix}")
  back = registry.read(path)
  assert back == [{k: r.get(k) for k in registry.COLUMNS} for r in rows]
  assert isinstance(back[0]["params"], int) and back[1]["humaneval_pass@1"] is None


def test_missing_inputs_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    registry.collect([tmp_path / "nope"])
  with pytest.raises(FileNotFoundError, match="writes one"):
    registry.read(tmp_path / "registry.csv")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    registry.run_row(tmp_path / "empty")


def test_an_eval_of_other_weights_is_never_shown_beside_the_run(tmp_path):
  workdir, _ = fake_run(tmp_path, "a", pass_at_1=0.25)
  assert registry.run_row(workdir)["humaneval_pass@1"] == 0.25
  (workdir / "export" / "params" / "d").write_bytes(b"retrained weights")  # same path
  row = registry.run_row(workdir)
  assert row["humaneval_pass@1"] is None and row["humaneval_protocol"] is None
  assert row["humaneval_eval"].startswith("stale: it scored weights")
  summary = json.loads((workdir / "eval_humaneval" / "summary.json").read_text())
  del summary["protocol"]["generator"]  # from before fingerprints: cannot be vouched for
  (workdir / "eval_humaneval" / "summary.json").write_text(json.dumps(summary))
  row = registry.run_row(workdir)
  assert row["humaneval_pass@1"] is None and row["humaneval_eval"].startswith("unverified")


def test_params_and_flops_of_a_model_fn_variant_are_the_models(tmp_path):
  from test_model_fn import SwiGLUPhi1  # SwiGLU blocks: 3 d x d_ff matrices per MLP, not 2
  workdir, c = fake_run(tmp_path, "swiglu")
  config = json.loads((workdir / "config.json").read_text())
  config["model_fn"] = "test_model_fn:SwiGLUPhi1"
  (workdir / "config.json").write_text(json.dumps(config))
  row = registry.run_row(workdir)
  model = Phi1Config(**c.model)
  from flax import nnx
  import jax
  leaves = jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: SwiGLUPhi1(model, rngs=nnx.Rngs(0))), nnx.Param))
  assert row["params"] == sum(x.size for x in leaves) != count_params(model)
  extra = model.n_layers * model.d_model * model.d_ff  # the gates
  assert row["matmul_params"] == flops.param_counts(model)[1] + extra
  assert row["flops"] == pytest.approx(20 * 8 * 64 * (6.0 * row["matmul_params"]
                                                      + 6.0 * model.n_layers * 64 * model.d_model))
