"""Trainer: sharding parity, exact resume after SIGKILL, precision policies, accumulation, bad input."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1 import config as config_lib, metrics, sharding, train
from phi1.model import Phi1Config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(stdlib_corpus):
  """The session's stdlib corpus and tokenizer (tests/conftest.py); modules import this name."""
  return stdlib_corpus


def tiny_config(corpus, **overrides):
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config.tiny(vocab_size=512, n_layers=2))
  c.steps, c.batch_size, c.seq_len = 10, 8, 64
  c.precision, c.mesh = "fp32", "dp"
  c.optimizer.peak_lr, c.optimizer.warmup_steps, c.optimizer.schedule_steps = 3e-3, 2, 100
  c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 5
  c.data.sources = [{"path": corpus["train"], "weight": 1.0}]
  c.data.tokenizer = corpus["tokenizer"]
  c.data.prefetch_batches = 0
  flat = {k: str(v) for k, v in overrides.items()}
  return config_lib.apply_overrides(c, flat)


def synthetic_batch(seed, batch, seq, vocab=512):
  tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1))
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "loss_mask": np.ones((batch, seq), np.float32)}


def run_steps(trainer, n, batch_size=8, seq=64):
  state, losses = trainer.init_state(), []
  for i in range(n):
    state, m = trainer.step(state, synthetic_batch(i, batch_size, seq))
    losses.append(float(m["loss"]))
  return state, losses


def packed_batch(seed, batch, seq, vocab=512):
  """Document-packed rows as `packing="document"` makes them: several documents a row (segment_ids
  1-based, positions restarting at each), padding at the end of most rows and a masked prompt at
  the start of some documents. Every row keeps a different number of target tokens, so each
  device's shard of the batch does too (row r keeps about (r + 1) / batch of its positions)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, seq + 1))
  segment_ids, positions = np.zeros((batch, seq), np.int32), np.zeros((batch, seq), np.int32)
  loss_mask = np.zeros((batch, seq), np.float32)
  for r in range(batch):
    fill = max(4, (r + 1) * seq // batch - int(rng.integers(0, 3)))
    cuts = sorted(rng.choice(np.arange(1, fill), size=min(3, fill - 1), replace=False))
    for segment, (start, end) in enumerate(zip([0, *cuts], [*cuts, fill]), start=1):
      segment_ids[r, start:end] = segment
      positions[r, start:end] = np.arange(end - start)
      prompt = int(rng.integers(0, 3)) if end - start > 3 else 0
      loss_mask[r, start + prompt:end] = 1.0
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}


def packed_run(trainer, updates=4, batch_size=8, seq=64, rows=slice(None)):
  """`updates` optimizer updates on packed batches from step 1 on, so the first update already has
  the peak LR (the schedule's step 0 has LR 0, and Adam's first update is scale-free: an update
  at LR 0 would hide a wrong gradient). `rows` picks this process's rows of each global batch.
  Returns per-step losses, grad norms and LRs, and the final state."""
  state = trainer.init_state()
  state = dataclasses.replace(state, step=jax.device_put(jnp.int32(1), state.step.sharding))
  out = {"loss": [], "grad_norm": [], "lr": []}
  for i in range(updates):
    state, m = trainer.step(state, {k: v[rows] for k, v in packed_batch(i, batch_size, seq).items()})
    for k in out:
      out[k].append(float(train.local_value(m[k])))
  return out, state


def numerics_config(corpus, **overrides):
  """Peak LR from the first update on (warmup 1), weight decay and clipping on: the parts of AdamW
  that do not cancel a wrong gradient scale."""
  return tiny_config(corpus, **{"optimizer.warmup_steps": 1, "optimizer.peak_lr": 1e-2,
                                "model.n_layers": 1, **overrides})


def host_params(params) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(params)]


# Tolerances between 1 device and 8: the sums run in another order (fp32: rounding only). fp32
# parameters are compared elementwise to 1% of one update (LR 1e-2): Adam divides by sqrt(v), so an
# element whose gradient is rounding noise can move by a visible fraction of the LR. bf16 and fp16
# round every matmul input, and the rounding of a sum depends on how it was split: there the whole
# update (final - initial parameters) must agree to `update` of its norm.
TOLERANCE = {"fp32": dict(loss=1e-5, grad_norm=1e-4, params=1e-4),
             "bf16": dict(loss=2e-3, grad_norm=2e-2, update=5e-2),
             "fp16": dict(loss=1e-3, grad_norm=1e-2, update=2e-2)}
_REFERENCE = {}


def one_device_reference(corpus, precision):
  """Initial parameters, and 4 updates on one device: once per precision for the whole module."""
  if precision not in _REFERENCE:
    one = train.Trainer(numerics_config(corpus, precision=precision),
                        mesh=sharding.make_mesh("dp", jax.devices()[:1]))
    initial = host_params(one.init_state().params)
    out, state = packed_run(one)
    _REFERENCE[precision] = out, host_params(state.params), initial
  return _REFERENCE[precision]


def assert_same_training(out, params, reference, precision):
  ref_out, ref_params, initial = reference
  tol = TOLERANCE[precision]
  assert all(lr > 0 for lr in out["lr"]), out["lr"]
  np.testing.assert_allclose(out["loss"], ref_out["loss"], rtol=tol["loss"])
  np.testing.assert_allclose(out["grad_norm"], ref_out["grad_norm"], rtol=tol["grad_norm"])
  assert len(params) == len(ref_params)
  if "params" in tol:
    for a, b in zip(params, ref_params):
      np.testing.assert_allclose(a, b, atol=tol["params"], rtol=tol["params"])
  else:
    diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(params, ref_params)))
    update = np.sqrt(sum(np.sum((b - p0) ** 2) for b, p0 in zip(ref_params, initial)))
    assert diff <= tol["update"] * update, (diff, update)


@pytest.mark.parametrize("mesh, precision", [
    ("dp", "fp32"), ("fsdp", "fp32"), ("fsdp_tp", "fp32"), ("fsdp_tp", "bf16"), ("fsdp", "fp16")])
def test_8_devices_train_exactly_as_one_device(corpus, mesh, precision):
  """Per-step loss and grad norm and the final parameters of 4 updates on uneven, packed batches
  equal one device's: a gradient summed instead of averaged over shards, or a loss normalised per
  shard instead of by the global token count, changes them."""
  assert jax.device_count() == 8
  eight = train.Trainer(numerics_config(corpus, mesh=mesh, precision=precision))
  assert sharding.batch_shards(eight.mesh) == (4 if mesh == "fsdp_tp" else 8)
  out, state = packed_run(eight)
  assert_same_training(out, host_params(state.params), one_device_reference(corpus, precision),
                       precision)


def test_pure_fsdp_holds_an_eighth_of_the_parameters_per_device(corpus):
  trainer = train.Trainer(tiny_config(corpus, mesh="fsdp"))
  state = trainer.init_state()
  total = sum(x.nbytes for x in jax.tree.leaves(state.params))
  per_device = {}
  for x in jax.tree.leaves(state.params):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  assert len(per_device) == 8
  # Everything with an `embed` axis is split 8 ways; only LayerNorm vectors and biases without one
  # are replicated, a few percent of the bytes.
  for nbytes in per_device.values():
    assert total / 8 <= nbytes < 1.1 * total / 8


def test_grad_accumulation_equals_one_big_batch(corpus):
  big = train.Trainer(tiny_config(corpus, batch_size=32))
  accum = train.Trainer(tiny_config(corpus, batch_size=32, grad_accum=4))
  batch = synthetic_batch(0, 32, 64)
  batch["loss_mask"][:, :10] = 0.0  # uneven token counts across micro-batches
  batch["loss_mask"][3, :] = 0.0
  s_big, m_big = big.step(big.init_state(), batch)
  s_acc, m_acc = accum.step(accum.init_state(), batch)
  np.testing.assert_allclose(float(m_acc["loss"]), float(m_big["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m_acc["grad_norm"]), float(m_big["grad_norm"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_big.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("policy", ["fp32", "bf16"])
def test_precision_policies_reduce_the_loss(corpus, policy):
  trainer = train.Trainer(tiny_config(corpus, precision=policy))
  batch = synthetic_batch(0, 8, 64)
  state, losses = trainer.init_state(), []
  for _ in range(12):  # memorise one batch: the loss must fall
    state, m = trainer.step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.3, losses


def test_fp16_loss_scale_doubles_every_period_good_steps_and_a_skipped_step_changes_nothing(corpus):
  """period=2: the scale doubles after every 2nd good step (the exact sequence of scale and
  good-step count). Then an overflow (scale 2^40 makes the fp16 backward pass overflow for real)
  is skipped: parameters and AdamW's state stay bitwise equal, the scale halves, the count resets."""
  trainer = train.Trainer(tiny_config(corpus, precision="fp16", **{"loss_scale.init": 2.0**15,
                                                                   "loss_scale.period": 2}))
  state, batch = trainer.init_state(), synthetic_batch(0, 8, 64)
  seen = []
  for _ in range(6):
    state, m = trainer.step(state, batch)
    seen.append((int(m["skipped"]), float(m["loss_scale"]), float(state.loss_scale.scale),
                 int(state.loss_scale.good_steps)))
  assert seen == [(0, 2.0**15, 2.0**15, 1), (0, 2.0**15, 2.0**16, 0), (0, 2.0**16, 2.0**16, 1),
                  (0, 2.0**16, 2.0**17, 0), (0, 2.0**17, 2.0**17, 1), (0, 2.0**17, 2.0**18, 0)]
  state, m = trainer.step(state, batch)  # good_steps 1: the next good step would double
  huge = jax.device_put(jnp.float32(2.0**40), state.loss_scale.scale.sharding)
  state = dataclasses.replace(state, loss_scale=dataclasses.replace(state.loss_scale, scale=huge))
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  step_before = int(state.step)
  state, m = trainer.step(state, batch)
  assert int(m["skipped"]) == 1 and float(m["loss_scale"]) == 2.0**40
  assert float(state.loss_scale.scale) == 2.0**39 and int(state.loss_scale.good_steps) == 0
  assert int(state.step) == step_before + 1  # the schedule moves on, as DeepSpeed's does
  after = jax.tree.map(np.asarray, (state.params, state.opt_state))
  leaves_before, leaves_after = jax.tree.leaves(before), jax.tree.leaves(after)
  assert len(leaves_before) == len(leaves_after) > 10
  for a, b in zip(leaves_after, leaves_before):
    np.testing.assert_array_equal(a, b)  # bitwise: weights, Adam moments and count


def test_loss_scale_is_capped_and_floored():
  from phi1 import precision
  scale = precision.LossScale.create("fp16", init_scale=2.0**22, period=1)
  grown = []
  for _ in range(4):
    scale = scale.adjust(jnp.bool_(True))
    grown.append(float(scale.scale))
  assert grown == [2.0**23, 2.0**24, 2.0**24, 2.0**24]  # max_scale 2^24
  scale = precision.LossScale.create("fp16", init_scale=4.0, period=1)
  shrunk = []
  for _ in range(4):
    scale = scale.adjust(jnp.bool_(False))
    shrunk.append((float(scale.scale), int(scale.good_steps)))
  assert shrunk == [(2.0, 0), (1.0, 0), (1.0, 0), (1.0, 0)]  # min_scale 1
  fixed = precision.LossScale.create("bf16")
  assert float(fixed.adjust(jnp.bool_(False)).scale) == 1.0 and fixed.scale_loss(3.0) == 3.0


def test_run_writes_metrics_plot_checkpoints_and_export(corpus, tmp_path):
  cfg = tiny_config(corpus, steps=6, eval_every=3, checkpoint_every=3, **{"data.eval_fraction": 0.1})
  train.run(cfg, tmp_path, progress=False)
  records = metrics.read_metrics(tmp_path)
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
    assert all(np.isfinite(r[key]) for r in records if "loss" in r), key
  assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
  assert (tmp_path / "loss.png").stat().st_size > 1000
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  assert list((tmp_path / "tensorboard").iterdir())
  from phi1 import checkpoint
  model, tok = checkpoint.load_for_inference(tmp_path)
  assert model.config.n_layers == 2 and tok.vocab_size == corpus["vocab"]


# A training process that SIGKILLs itself right after it logs step `kill_at`, once the checkpoint
# before it is on disk (checkpoints are saved asynchronously): a deterministic kill point, which a
# parent polling the files could miss on a loaded machine.
KILLED_RUN = r'''
import json, os, pathlib, signal, sys, time
sys.path.insert(0, sys.argv[1])
from test_train import tiny_config
from phi1 import metrics, train
corpus, overrides, workdir, kill_at = json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
write = metrics.MetricsWriter.write
def write_then_die(self, step, values):
  write(self, step, values)
  if step == kill_at and "loss" in values:
    saved = pathlib.Path(workdir) / "checkpoints" / str(kill_at // 3 * 3)
    for _ in range(3000):
      if saved.is_dir():
        break
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)
metrics.MetricsWriter.write = write_then_die
train.run(tiny_config(corpus, **overrides), workdir, progress=False)
'''


def _run_killed_at(corpus, overrides, workdir, kill_at):
  proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(REPO / "tests"), json.dumps(corpus),
                         json.dumps(overrides), str(workdir), str(kill_at or 0)],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == (-signal.SIGKILL if kill_at else 0), proc.stderr[-3000:]
  return proc.stdout


RESUME_OVERRIDES = {"steps": 10, "checkpoint_every": 3, "data.shuffle_seed": 3,
                    "model.resid_dropout": 0.1}


@pytest.fixture(scope="module")
def straight_losses(corpus, tmp_path_factory):
  """10 uninterrupted steps in this process, without prefetching."""
  workdir = tmp_path_factory.mktemp("straight")
  train.run(tiny_config(corpus, **RESUME_OVERRIDES), workdir, progress=False)
  return [(r["step"], r["loss"]) for r in metrics.read_metrics(workdir) if "loss" in r]


@pytest.mark.parametrize("prefetch", [config_lib.base_config().data.prefetch_batches, 0])
def test_resume_after_sigkill_is_exact(corpus, tmp_path, straight_losses, prefetch):
  """SIGKILLed after logging step 4 and again after step 8 (checkpoints every 3 steps), rerun each
  time: the same losses, bit for bit, as an uninterrupted run, with the default prefetch (batches
  read ahead must not count as consumed) and without."""
  assert config_lib.base_config().data.prefetch_batches > 0
  overrides = {**RESUME_OVERRIDES, "data.prefetch_batches": prefetch}
  killed = tmp_path / "killed"
  _run_killed_at(corpus, overrides, killed, kill_at=4)
  assert not (killed / "export").exists()
  out = _run_killed_at(corpus, overrides, killed, kill_at=8)
  assert "resumed from step 3" in out
  out = _run_killed_at(corpus, overrides, killed, kill_at=None)
  assert "resumed from step 6" in out
  resumed = [(r["step"], r["loss"]) for r in metrics.read_metrics(killed) if "loss" in r]
  assert [s for s, _ in straight_losses] == list(range(1, 11))
  assert resumed == straight_losses


def test_unknown_config_key_suggests_the_right_one(corpus):
  with pytest.raises(KeyError, match=r"did you mean '(model\.)?n_layers'"):
    tiny_config(corpus, **{"model.n_layer": 3})


def test_batch_not_divisible_by_mesh_is_refused(corpus):
  with pytest.raises(ValueError, match="divisible by the data-parallel device count"):
    train.Trainer(tiny_config(corpus, batch_size=12))


def test_missing_data_path_is_named(corpus, tmp_path):
  cfg = tiny_config(corpus)
  cfg.data.sources = [{"path": str(tmp_path / "nope.jsonl"), "weight": 1.0}]
  with pytest.raises(Exception, match="nope.jsonl"):
    train.run(cfg, tmp_path / "w", progress=False)


def test_nan_loss_stops_and_names_the_last_good_checkpoint(corpus, tmp_path):
  cfg = tiny_config(corpus, steps=30, checkpoint_every=2, **{"optimizer.peak_lr": 1e5,
                                                             "optimizer.grad_clip": 0.0})
  with pytest.raises(train.TrainingDiverged, match=r"last good checkpoint is step \d+"):
    train.run(cfg, tmp_path, progress=False)


def test_a_full_disk_seen_first_by_the_metrics_files_gets_the_same_clear_error(
    corpus, tmp_path, monkeypatch):
  """The disk can fill between a checkpoint and the last flush of metrics.jsonl/TensorBoard: that
  failure, while closing, must not surface as a bare ENOSPC (CI saw one)."""
  def full_disk(self):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(metrics.MetricsWriter, "close", full_disk)
  with pytest.raises(OSError, match="disk full while writing to .*rerun the same command"):
    train.run(tiny_config(corpus, steps=2, checkpoint_every=2), tmp_path / "w", progress=False)


def test_a_failing_close_does_not_replace_the_error_already_on_its_way_out(
    corpus, tmp_path, monkeypatch):
  def full_disk(self):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(metrics.MetricsWriter, "close", full_disk)
  cfg = tiny_config(corpus, steps=30, checkpoint_every=2, **{"optimizer.peak_lr": 1e5,
                                                             "optimizer.grad_clip": 0.0})
  with pytest.raises(train.TrainingDiverged):
    train.run(cfg, tmp_path, progress=False)


def test_disk_full_during_save_is_a_clear_error_and_no_partial_checkpoint_is_visible(corpus, tmp_path):
  """A real full disk: the workdir on a 1 MB tmpfs (root only), too small for one checkpoint."""
  mountpoint = tmp_path / "small_disk"
  mountpoint.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    with pytest.raises(OSError, match="disk full while writing to .*no checkpoint is complete") as info:
      train.run(tiny_config(corpus, steps=4, checkpoint_every=2), mountpoint / "w", progress=False)
    assert info.value.errno == 28
    from phi1 import checkpoint
    manager = checkpoint.manager(mountpoint / "w", keep_last=1, keep_every=None)
    assert manager.latest_step() is None  # the half-written step is not a checkpoint
    manager.close()
  finally:
    subprocess.run(["umount", "--lazy", str(mountpoint)])  # writer threads may still hold files


def test_schedule_ends_at_the_runs_steps_unless_schedule_steps_is_set():
  opt = config_lib.base_config().optimizer
  opt.peak_lr, opt.warmup_steps, opt.end_lr = 1e-3, 10, 0.0
  assert opt.schedule_steps == 0  # the default follows the run
  schedule = train.make_schedule(opt, 100)
  assert float(schedule(10)) == pytest.approx(1e-3) and float(schedule(100)) == 0.0
  assert float(schedule(55)) == pytest.approx(0.5e-3)
  opt.schedule_steps = 200  # a run stopped early on a longer schedule (phi-1-base: 24K of 36K)
  assert float(train.make_schedule(opt, 100)(100)) == pytest.approx(1e-3 * 100 / 190)


def test_bf16_run_logs_window_mean_loss_records_bf16_and_writes_a_profile(corpus, tmp_path):
  """The logged train loss is the mean over its log window (log_every=3 at step 3 equals the mean
  of log_every=1's steps 1-3); config.json records the precision that ran; profile_steps traces."""
  every_step = tiny_config(corpus, steps=3, precision="bf16", checkpoint_every=100,
                           profile_steps=(1, 2))
  train.run(every_step, tmp_path / "a", progress=False)
  windowed = tiny_config(corpus, steps=3, precision="bf16", checkpoint_every=100, log_every=3)
  train.run(windowed, tmp_path / "b", progress=False)
  a = [r["loss"] for r in metrics.read_metrics(tmp_path / "a") if "loss" in r]
  b = [(r["step"], r["loss"]) for r in metrics.read_metrics(tmp_path / "b") if "loss" in r]
  assert len(a) == 3 and len(set(a)) == 3
  assert b == [(3, pytest.approx(np.mean(a), rel=1e-6))]
  recorded = json.loads((tmp_path / "a" / "config.json").read_text())
  assert recorded["precision"] == "bf16" and "dtype" not in recorded["model"]
  assert config_lib.phi1_config(config_lib.apply_overrides(
      config_lib.base_config(), {"precision": "bf16"})).dtype == "bfloat16"
  traces = list((tmp_path / "a" / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0
  assert list((tmp_path / "a" / "profile").rglob("*.trace.json.gz"))
  assert not (tmp_path / "b" / "profile").exists()


def test_model_dtype_is_not_a_config_key(corpus):
  with pytest.raises(KeyError, match="unknown config key 'model.dtype'"):
    tiny_config(corpus, **{"model.dtype": "bfloat16"})
  cfg = tiny_config(corpus)
  cfg.model.dtype = "float16"
  with pytest.raises(ValueError, match="set precision instead"):
    train.Trainer(cfg)


def test_scan_layers_trains_sharded_and_decays_only_matrices(corpus):
  trainer = train.Trainer(tiny_config(corpus, mesh="fsdp", **{"model.scan_layers": True}))
  spec = trainer.state_shardings.params["layers"]["mlp"]["fc1"]["kernel"].get_value().spec
  assert tuple(spec) == (None, "fsdp", None)  # [layers, embed, mlp]: the stack is not split
  state, losses, batch = trainer.init_state(), [], synthetic_batch(0, 8, 64)
  for _ in range(4):  # one batch again and again: the loss must fall
    state, m = trainer.step(state, batch)
    losses.append(float(m["loss"]))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  mask = nnx.to_pure_dict(train.decay_mask(trainer.abstract_state.params, stacked_layers=True))
  layer = mask["layers"]
  assert layer["mlp"]["fc1"]["kernel"] and layer["self_attn"]["q_proj"]["kernel"]
  assert not layer["mlp"]["fc1"]["bias"] and not layer["input_layernorm"]["scale"]
  assert mask["embed_tokens"]["embedding"] and not mask["final_layernorm"]["bias"]


@pytest.mark.parametrize("source_scanned", [False, True])
def test_init_from_takes_stacked_or_separate_blocks(corpus, tmp_path, source_scanned):
  """A scanned recipe finetunes from an export or HF directory with one tensor per layer (and the
  reverse): the trainer starts from the same weights either way."""
  from phi1 import checkpoint as ckpt_lib, layer_layout, model as model_lib
  source = model_lib.Phi1(Phi1Config.tiny(vocab_size=512, n_layers=2, scan_layers=source_scanned),
                          rngs=nnx.Rngs(3))
  ckpt_lib.export_params(source, tmp_path / "export")
  trainer = train.Trainer(tiny_config(corpus, **{"init_from": str(tmp_path / "export"),
                                                 "model.scan_layers": not source_scanned}))
  params = trainer.init_state().params
  target = layer_layout.with_layer_layout(source, not source_scanned)
  assert target.config.scan_layers == (not source_scanned)
  tokens = jnp.asarray(synthetic_batch(0, 2, 16)["inputs"])
  np.testing.assert_allclose(np.asarray(target(tokens)), np.asarray(source(tokens)), atol=1e-5,
                             rtol=0)
  want, got = jax.tree.leaves(nnx.state(target, nnx.Param)), jax.tree.leaves(params)
  assert len(want) == len(got) and [a.shape for a in want] == [b.shape for b in got]
  for a, b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
