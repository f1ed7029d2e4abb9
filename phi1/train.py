"""Training: one jitted, sharded train step and the loop around it.

The step is a pure function `(TrainState, batch) -> (TrainState, metrics)`, jitted once with
explicit in/out shardings from `phi1/sharding.py` and the state donated. Inside it:
  * gradient accumulation over `grad_accum` micro-batches with `lax.scan`, so one step is one
    optimizer update whatever the micro-batch size (MaxText PR #812). The loss is the mean over
    every target token of the whole batch, so 4 x b accumulated equals one step on 4b exactly;
  * dynamic loss scaling for fp16 (phi1/precision.py): a step with non-finite gradients leaves
    parameters and optimizer state untouched and halves the scale;
  * dropout keys derived from (seed, step, micro-batch), so a resumed run draws the same masks.
AdamW with linear warmup and linear decay; no weight decay on biases, LayerNorms (paper §2.3 gives
the peak LR, warmup and weight decay; the rest is in phi1/config.py).
"""

import dataclasses
import errno
import functools
import math
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from phi1 import attention as attention_lib
from phi1 import checkpoint as ckpt_lib
from phi1 import config as config_lib
from phi1 import flops, log_window, losses, metrics as metrics_lib, precision, preemption
from phi1 import layer_layout, profiling, run_identity, sharding
from phi1 import model as model_lib
from phi1 import model_fn as model_fn_lib
from phi1.model import Phi1


class TrainingDiverged(RuntimeError):
  pass


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of the model's Params (float32 master weights)
  opt_state: Any
  loss_scale: precision.LossScale
  key: jax.Array  # raw uint32 key data of the run's base key


def make_schedule(opt: ml_collections.ConfigDict, steps: int):
  """Linear warmup, then linear decay to end_lr at schedule_steps (0: at the run's `steps`)."""
  warmup = max(int(opt.warmup_steps), 1)
  decay = max((int(opt.schedule_steps) or int(steps)) - warmup, 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, opt.peak_lr, warmup),
       optax.linear_schedule(opt.peak_lr, opt.end_lr, decay)], [warmup])


def decay_mask(params, stacked_layers: bool = False):
  """True for the parameters weight decay applies to: matrices (linear kernels, embeddings), not
  biases or LayerNorm parameters, which are 1-D (under scan_layers, parameters in `layers` carry
  one more, stacked, axis)."""
  def is_matrix(path, p):
    stacked = stacked_layers and getattr(path[0], "key", None) == "layers"
    return p.ndim - int(stacked) >= 2
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(opt: ml_collections.ConfigDict, steps: int, stacked_layers: bool = False):
  schedule = make_schedule(opt, steps)
  mask = functools.partial(decay_mask, stacked_layers=stacked_layers)
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=mask))
  return optax.chain(*parts), schedule


def loss_sum(params, graphdef, batch, key):
  """Sum of next-token cross-entropy over the tokens `loss_mask` keeps (fp32 logits).

  The LM head and the loss run fused, a chunk of positions at a time (phi1/losses.py): the full
  [B, T, 51200] logits never exist."""
  model = nnx.merge(graphdef, params)
  h_BTD = model.hidden_states(batch["inputs"], segment_ids=batch.get("segment_ids"),
                              positions=batch.get("positions"), rngs=nnx.Rngs(dropout=key))
  return losses.lm_head_cross_entropy(
      h_BTD, model.lm_head.kernel[...], model.lm_head.bias[...], batch["targets"],
      batch["loss_mask"], dtype=model_lib.DTYPES[model.config.dtype])


def _micro_batches(batch, grad_accum: int):
  """[A*b, ...] -> [A, b, ...], keeping each device's rows on that device (row i*A + a -> [a, i])."""
  def split(x):
    x = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch, *, graphdef, tx, schedule, grad_accum: int):
  n_tokens = jnp.maximum(batch["loss_mask"].sum(), 1.0)
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

  def micro_grads(mb, index):
    def scaled_loss(params):
      loss = loss_sum(params, graphdef, mb, jax.random.fold_in(step_key, index)) / n_tokens
      return state.loss_scale.scale_loss(loss), loss
    (_, loss), grads = jax.value_and_grad(scaled_loss, has_aux=True)(state.params)
    return grads, loss

  if grad_accum == 1:  # no loop, no zero-filled accumulator
    grads, loss = micro_grads(batch, 0)
  else:
    def accumulate(grads_acc, micro):
      grads, loss = micro_grads(*micro)
      return jax.tree.map(jnp.add, grads_acc, grads), loss
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, losses = jax.lax.scan(
        accumulate, zeros, (_micro_batches(batch, grad_accum), jnp.arange(grad_accum)))
    loss = losses.sum()
  grads = state.loss_scale.unscale(grads)
  finite = precision.all_finite(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if state.loss_scale.dynamic:  # fp16: a non-finite step changes nothing but the scale
    params = precision.select_tree(finite, params, state.params)
    opt_state = precision.select_tree(finite, opt_state, state.opt_state)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         loss_scale=state.loss_scale.adjust(finite), key=state.key)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "lr": schedule(state.step), "loss_scale": state.loss_scale.scale,
             "skipped": (~finite).astype(jnp.int32), "tokens": n_tokens}
  return new_state, metrics


def eval_step(params, batch, *, graphdef):
  return loss_sum(params, graphdef, batch, jax.random.key(0)), batch["loss_mask"].sum()


class Trainer:
  """Builds the sharded state and the jitted steps for one config; `run(workdir)` trains."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, model_fn=None):
    """`model_fn(model_config, rngs=...)` builds the model (default: `config.model_fn`, an import
    path, or Phi1); its import path is recorded in `self.config.model_fn` (phi1/model_fn.py)."""
    config = config.copy_and_resolve_references()
    # attention_impl="auto" becomes the impl this backend runs (pallas on GPU, xla elsewhere),
    # so the run's config.json and config hash record what ran.
    config.model.attention_impl = attention_lib.resolve_impl(config.model.attention_impl)
    if model_fn is not None:
      config.model_fn = model_fn_lib.import_path(model_fn)
    self.model_fn = model_fn or model_fn_lib.resolve(config.model_fn)
    self.config = config
    self.model_config = config_lib.phi1_config(config)
    self.mesh = mesh or sharding.make_mesh(config.mesh, tensor=config.tensor_parallel)
    self.rules = sharding.rules_for(config.mesh, config.sharding_rules)
    n_batch = sharding.batch_shards(self.mesh)
    if config.batch_size % (n_batch * config.grad_accum):
      raise ValueError(
          f"batch_size={config.batch_size} must be divisible by the data-parallel device count "
          f"({n_batch}) times grad_accum={config.grad_accum}; pick a multiple of "
          f"{n_batch * config.grad_accum}")
    if config.seq_len > self.model_config.max_seq_len:
      raise ValueError(f"seq_len={config.seq_len} exceeds model.max_seq_len="
                       f"{self.model_config.max_seq_len}")
    self.tx, self.schedule = make_optimizer(config.optimizer, config.steps,
                                            self.model_config.scan_layers)
    self.replicated = sharding.replicated(self.mesh)

    abstract_model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
    model_fn_lib.check_interface(abstract_model, config.model_fn)
    abstract_model.train()  # dropout on: `deterministic` is static, so each mode has a graphdef
    self.graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    abstract_model.eval()
    self.eval_graphdef = nnx.split(abstract_model, nnx.Param)[0]
    self.abstract_state = jax.eval_shape(self._init_state)
    self.state_shardings = self._state_shardings(abstract_params)
    self.batch_sharding = sharding.batch_sharding(self.mesh)

    self._train_step = jax.jit(
        functools.partial(train_step, graphdef=self.graphdef, tx=self.tx,
                          schedule=self.schedule, grad_accum=config.grad_accum),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, self.replicated), donate_argnames=("state",))
    self._eval_step = jax.jit(
        functools.partial(eval_step, graphdef=self.eval_graphdef),
        in_shardings=(self.state_shardings.params, self.batch_sharding),
        out_shardings=self.replicated)

  def _build(self, rngs):
    return self.model_fn(self.model_config, rngs=rngs)

  def _init_state(self) -> TrainState:
    model = self._build(nnx.Rngs(self.config.seed))
    params = nnx.state(model, nnx.Param)
    return TrainState(
        step=jnp.int32(0), params=params, opt_state=self.tx.init(params),
        loss_scale=precision.LossScale.create(self.config.precision, self.config.loss_scale.init,
                                              self.config.loss_scale.period),
        key=jax.random.key_data(jax.random.key(self.config.seed)))

  def _state_shardings(self, abstract_params) -> TrainState:
    c = self.model_config
    dim_names = {c.vocab_size: "vocab", c.d_ff: "mlp", c.d_model: "embed"}
    param_sh = sharding.param_shardings(abstract_params, self.mesh, self.rules, dim_names)
    opt_sh = optax.tree_map_params(
        self.tx, lambda _, s: s, self.abstract_state.opt_state, param_sh,
        transform_non_params=lambda _: self.replicated,
        is_leaf=lambda x: isinstance(x, nnx.Variable))
    everything = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    return dataclasses.replace(everything, params=param_sh, opt_state=opt_sh)

  def init_state(self) -> TrainState:
    """Fresh state, created directly in its sharded layout (no full copy on any one device)."""
    with sharding.activation_sharding(self.mesh, self.rules):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)()
    if self.config.init_from:
      state = self._load_init_params(state)
    return state

  def _load_init_params(self, state: TrainState) -> TrainState:
    """Start from pretrained weights (finetuning from phi-1-base)."""
    # Same weights whether the source's blocks are stacked or not (an HF directory never is).
    source = layer_layout.with_layer_layout(ckpt_lib.load_model(self.config.init_from),
                                         self.model_config.scan_layers)
    if source.config.__dict__ | {"dtype": None} != self.model_config.__dict__ | {"dtype": None}:
      diff = {k: (v, getattr(self.model_config, k)) for k, v in source.config.__dict__.items()
              if k != "dtype" and v != getattr(self.model_config, k)}
      raise ValueError(f"init_from={self.config.init_from} has a different model config: {diff}")
    params = jax.device_put(nnx.state(source, nnx.Param), self.state_shardings.params)
    return dataclasses.replace(state, params=params, opt_state=jax.jit(
        self.tx.init, out_shardings=self.state_shardings.opt_state)(params))

  def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    with sharding.activation_sharding(self.mesh, self.rules):
      return self._train_step(state, self.global_batch(batch))

  def eval_loss(self, params, batches) -> float:
    total, count = 0.0, 0.0
    with sharding.activation_sharding(self.mesh, self.rules):
      for batch in batches:
        loss, n = self._eval_step(params, self.global_batch(batch))
        total, count = total + float(local_value(loss)), count + float(local_value(n))
    return total / max(count, 1.0)

  def global_batch(self, local_batch: dict) -> dict:
    """Per-process numpy batch -> global jax.Arrays laid out over the batch axes of the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  def model(self, state: TrainState) -> Phi1:
    return nnx.merge(self.eval_graphdef, state.params)

  def abstract_state_with_shardings(self) -> TrainState:
    """Restore target: shapes, dtypes and the shardings each array should land in."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)


@dataclasses.dataclass(frozen=True)
class StepEnd:
  """What a hook sees after each step. `eval_step`: an `eval_every` step (or the last one)."""
  trainer: Trainer
  state: TrainState
  step: int  # steps done
  last_step: int
  eval_step: bool


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True,
        mesh=None, on_change: str = "refuse", model_fn=None, hooks=()) -> dict:
  """Train in `workdir`, resuming from its latest checkpoint; returns the last logged metrics.

  Checkpoints made with a different config are refused unless `on_change` is "restart" or
  "continue" (phi1/run_identity.py). `model_fn(model_config, rngs=...)` swaps in another model
  (see `Trainer`); its import path is part of the recorded config. `hooks`: callables
  `hook(StepEnd) -> dict | None` run after every step, after the config's own benchmark evals
  (phi1/evals/during_training.py); the metrics they return are logged at that step."""
  from phi1 import data as data_lib
  config_lib.validate(config)  # unknown keys, missing optional packages: before anything loads
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  trainer = Trainer(config, mesh=mesh, model_fn=model_fn)
  config = trainer.config  # with model_fn's import path recorded
  run_identity.check_and_record(workdir, config, on_change=on_change,
                                primary=jax.process_index() == 0)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  pipeline = data_lib.build(config.data, seq_len=config.seq_len, batch_size=config.batch_size)
  if pipeline.vocab_size is not None and pipeline.vocab_size > trainer.model_config.vocab_size:
    raise ValueError(f"the tokenizer has {pipeline.vocab_size} tokens but model.vocab_size is "
                     f"{trainer.model_config.vocab_size}; raise model.vocab_size")
  train_data = iter(pipeline.train)
  if jax.process_index() == 0:
    print(pipeline.stats.summary())
    print(f"data.mixture={config.data.mixture!r}: row shares " + ", ".join(
        f"{name} {share:.1%}" for name, share in pipeline.mixture_shares.items()))
  manager = ckpt_lib.manager(workdir, keep_last=config.keep_last, keep_every=config.keep_every)
  last_good = manager.latest_step()
  if last_good is not None:
    state = ckpt_lib.restore(manager, trainer.abstract_state_with_shardings(), train_data)
    print(f"resumed from step {last_good} in {manager.directory}")
  else:
    state = trainer.init_state()
  start = int(local_value(state.step))
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start, config=config,
                                     wandb_project=config.wandb_project)
  from phi1.evals import during_training  # solution loss and pass@k, when the config asks
  hooks = [h for h in (during_training.build(config, trainer), *hooks) if h is not None]
  bar = _progress_bar(progress, start, config.steps)
  last, window, pending = {}, log_window.LogWindow(tokens_per_step(config)), None
  profiler = profiling.StepProfiler(config.profile_steps, workdir)
  # SIGTERM/SIGINT finish the step, checkpoint and stop; optional time-based checkpoints.
  stop = preemption.StopSignals(config.get("checkpoint_every_minutes", 0))
  stop.install()

  def log(pending):  # a closed window's numbers, fetched after the next step was dispatched
    logged = pending.fetch()
    logged.update(mfu=mfu(config, trainer.model_config, logged["tokens_per_sec"]),
                  data_bad_records=float(pipeline.stats.problems))
    check_finite(logged["loss"], pending.step, last_good, workdir)
    writer.write(pending.step, logged)
    last.update(logged)
    bar.set_postfix(loss=f"{logged['loss']:.3f}", tok_s=f"{logged['tokens_per_sec']:,.0f}")

  try:
    try:
      for step in range(start, config.steps):
        profiler.before(step)
        state, step_metrics = trainer.step(state, next(train_data))
        profiler.after(step, step_metrics)
        window.add(step_metrics, timed=step != start)
        done = step + 1
        if step == start:  # keep compilation out of the throughput numbers
          jax.block_until_ready(step_metrics)
          window.restart_clock()
        if pending is not None:
          log(pending)
          pending = None
        if done % config.log_every == 0 or done == config.steps:
          pending = window.close(done)
        eval_step = bool(config.eval_every) and (done % config.eval_every == 0
                                                 or done == config.steps)
        if eval_step and pending is not None:  # the eval blocks anyway: log the window first
          log(pending)
          pending = None
        if eval_step:
          eval_loss = trainer.eval_loss(state.params, pipeline.eval_batches(config.eval_batches))
          writer.write(done, {"eval_loss": eval_loss})
          last["eval_loss"] = eval_loss
        for hook in hooks:
          if hook_metrics := hook(StepEnd(trainer, state, done, config.steps, eval_step)):
            writer.write(done, hook_metrics)
            last.update(hook_metrics)
        if done % config.checkpoint_every == 0 or done == config.steps or stop.save_due(done):
          loss = float(local_value(step_metrics["loss"]))
          check_finite(loss, done, last_good, workdir)  # never checkpoint a diverged state
          ckpt_lib.save(manager, done, state, train_data)
          last_good = done
          stop.saved()
        bar.update(1)
        if stop.requested and done < config.steps:
          break
      if pending is not None:
        log(pending)
      manager.wait_until_finished()
    finally:
      profiler.close()
      # A full disk also fails the metrics file's and TensorBoard's last flush: while an error
      # is on its way out, those secondary failures must not replace it.
      bar.close()
      _close_all(writer.close, manager.close, stop.uninstall)
  except (OSError, ValueError) as e:  # a save fails here, or in its async thread (ValueError)
    if is_disk_full(e):
      raise _disk_full(workdir, manager) from e
    raise
  if stop.requested and last_good is not None and last_good < config.steps:
    stopped = preemption.Stopped(last_good, stop.signum)
    if jax.process_index() == 0:
      print(stopped, flush=True)
    raise stopped
  ckpt_lib.export_params(trainer.model(state), workdir / "export",
                         tokenizer_path=config.data.tokenizer or None, model_fn=config.model_fn)
  if jax.process_index() == 0 and (workdir / "metrics.jsonl").exists():
    metrics_lib.plot_losses(workdir)
  return last


def _progress_bar(enabled: bool, start: int, total: int):
  from tqdm.auto import tqdm
  return tqdm(initial=start, total=total, disable=not enabled or jax.process_index() != 0,
              desc="train", unit="step", dynamic_ncols=True)


def local_value(x) -> np.ndarray:
  """A replicated jax.Array's value from this process's own copy (works across hosts)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def _close_all(*closers):
  """Call every closer; raise the first failure only if no other error is already in flight."""
  errors = []
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - re-raised below unless another error is in flight
      errors.append(e)
  if errors and sys.exc_info()[1] is None:
    raise errors[0]


def _disk_full(workdir, manager) -> OSError:
  latest = manager.latest_step()  # reads the directory: works on a closed manager too
  where = (f"the last complete checkpoint is step {latest}" if latest
           else "no checkpoint is complete yet")
  return OSError(errno.ENOSPC, f"disk full while writing to {workdir} (checkpoints, metrics); "
                 f"{where}. Free space and rerun the same command to resume.")


def is_disk_full(error: BaseException) -> bool:
  # Orbax's tensorstore writer reports ENOSPC as a ValueError("RESOURCE_EXHAUSTED ... No space").
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def check_finite(loss: float, step: int, last_good: int | None, workdir):
  if not math.isfinite(loss):
    where = (f"the last good checkpoint is step {last_good} in {workdir}/checkpoints"
             if last_good is not None else "no checkpoint was written yet")
    raise TrainingDiverged(f"loss became {loss} at step {step}; training stopped and {where}. "
                           "Lower optimizer.peak_lr, raise warmup, or use precision=bf16.")


def tokens_per_step(config) -> int:
  return config.batch_size * config.seq_len


def mfu(config, model_config, tokens_per_sec: float) -> float:
  # The fake CPU devices of a test host share one processor: count it once.
  devices = 1 if jax.default_backend() == "cpu" else jax.device_count()
  return flops.mfu(tokens_per_sec, model_config, config.seq_len, devices, config.model_fn)
