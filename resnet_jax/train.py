"""The training engine: `train_and_evaluate(config, workdir)`.

Read top to bottom: the train state, the per-device train and eval steps (pmap style,
run by `jax.shard_map` inside `jax.jit` over the 'data' mesh), then the loop with its
evaluation, metrics, checkpoints, resume and preemption handling.

What makes a run's record trustworthy: one process per workdir (`checkpoint.WorkdirLock`);
a resume refuses a config that differs from the run's record outside
`schema.RESUMABLE_KEYS`, before it writes anything; a state is saved only when
everything measured since the previous save is finite (`DivergenceGuard`); SIGTERM and
a first Ctrl-C save and exit, also in the middle of an evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoint, data, metrics, optim, parallel
from resnet_jax import schema
from resnet_jax.data import augment
from resnet_jax.data.pipeline import local_batch
from resnet_jax.errors import ConfigChanged, ConfigError, TrainingDiverged, WorkdirError
from resnet_jax.metrics import RESULTS_FILE
from resnet_jax.model import architecture, build_model, model_name, stack_repeated_blocks, unrolled
from resnet_jax.parallel import DATA_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimiser steps taken, which is also the data position
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; each step folds in its step number


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def device_images(images, keys, config, mean, std, dtype):
  """Normalises and augments (when `keys` is given) one device's images.

  The authors normalise, then pad and crop: the padding of `augment.pad_mode='mean'` is
  zero in the normalised space, the mean colour (fb.resnet.torch datasets/cifar10.lua:
  ColorNormalize before RandomCrop; He et al.'s mean-subtracted Caffe inputs); 'black'
  pads the uint8 pixels first, as torchvision's RandomCrop on images does. float32 images
  arrive normalised already (a pixel_mean or zca normalisation; pipeline.local_batch).
  """
  crop = keys is not None and (config.augment.crop_padding or config.augment.flip)
  black = config.augment.pad_mode == 'black'

  def crop_flip(images):
    return jax.vmap(lambda key, image: augment.random_crop_flip(
        key, image[None], config.augment.crop_padding, config.augment.flip,
        'reflect' if config.augment.pad_mode == 'reflect' else 'constant')[0])(keys, images)

  if crop and black and images.dtype == jnp.uint8:
    images = crop_flip(images)
    crop = False
  if images.dtype == jnp.uint8:
    images = augment.normalize(images, mean, std, dtype)
  else:
    images = images.astype(dtype)
  if crop:
    images = crop_flip(images)
  if keys is not None and config.augment.pca_noise:  # AlexNet lighting, on the [0, 1] scale
    offsets = jax.vmap(lambda key: augment.pca_lighting(
        jax.random.fold_in(key, 2), 1, config.augment.pca_noise)[0])(keys)
    images = (images + offsets[:, None, None, :] / jnp.asarray(std, jnp.float32)).astype(dtype)
  if keys is not None and config.augment.cutout:
    images = jax.vmap(lambda key, image: augment.cutout(
        jax.random.fold_in(key, 1), image[None], config.augment.cutout)[0])(keys, images)
  if config.augment.resize_to:  # e.g. 32 px CIFAR up to a pretrained backbone's resolution
    size = config.augment.resize_to
    images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                              'bilinear').astype(dtype)
  return images


def make_local_train_step(model, tx, multiplier, config, mean, std, num_classes: int,
                          train_mode: bool = True):
  """The per-device step `(state, arrays, batch) -> (state, metrics)`, in pmap style.

  `arrays` holds the device-resident dataset (or nothing, for streamed input) and `batch`
  this device's share of the step's indices (or images). Per-example augmentation keys
  are folded from the example's position in the *global* batch, so augmentation does not
  depend on how many devices there are. Dropout masks are drawn per device.
  Must run where the 'data' axis is bound (shard_map); vmap it to train stacked runs.
  """
  dtype = model.dtype

  def local_step(state: TrainState, arrays, batch):
    images, labels = local_batch(arrays, batch)
    local_size = labels.shape[0]
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    positions = lax.axis_index(DATA_AXIS) * local_size + jnp.arange(local_size)
    keys = jax.vmap(lambda p: jax.random.fold_in(augment_key, p))(positions)
    inputs = device_images(images, keys, config, mean, std, dtype)
    dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(DATA_AXIS))

    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, inputs, train=train_mode,
          mutable=['batch_stats'], rngs={'dropout': dropout_key})
      local_loss = cross_entropy(logits, labels, num_classes, config.label_smoothing).mean()
      # The mean over the global batch. Params are replicated (invariant over 'data'), so
      # shard_map's autodiff sums their gradient over devices: no explicit pmean of grads.
      loss = lax.pmean(local_loss, DATA_AXIS)
      return loss, (logits, updates.get('batch_stats', state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if not config.sync_batch_stats:  # local BN statistics; keep the running averages in step
      batch_stats = lax.pmean(batch_stats, DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {
        'loss': loss,
        'accuracy': lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), DATA_AXIS),
        'lr': optim.current_lr(state.opt_state, multiplier, state.step),
        'grad_norm': optax.tree.norm(grads),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, step_metrics

  return local_step


def make_train_step(local_step, mesh):
  """Runs a per-device step over the whole mesh: jit(shard_map(...)), state donated."""
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=0)


def make_eval_step(model, config, mesh, mean, std, num_classes: int):
  """A jitted `(state, arrays, batch) -> sums` of loss, top-1/top-5 hits and count."""
  dtype = model.dtype

  def local_eval(state: TrainState, arrays, batch):
    images, labels = local_batch(arrays, batch)
    crops = images.shape[1] if images.ndim == 5 else 1  # ten-crop: [N, 10, H, W, C]
    inputs = device_images(images.reshape((-1,) + images.shape[-3:]), None, config, mean,
                           std, dtype)
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, inputs,
                         train=False)
    logits = mean_over_crops(logits, crops)
    mask = batch['mask'].astype(jnp.float32)
    top5 = lax.top_k(logits, min(5, num_classes))[1]
    sums = {
        'loss': jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        'count': jnp.sum(mask),
    }
    return lax.psum(sums, DATA_AXIS)

  sharded = jax.shard_map(local_eval, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)),
                          out_specs=P())
  return jax.jit(sharded)


def mean_over_crops(logits, crops: int):
  """Per-example logits from `crops` consecutive views of each example: their mean.

  fb.resnet.torch (train.lua computeScore) sums the ten crops' raw outputs; the mean
  ranks classes the same and keeps the loss on the scale of one view.
  """
  if crops == 1:
    return logits
  return logits.astype(jnp.float32).reshape(-1, crops, logits.shape[-1]).mean(axis=1)


def evaluate(eval_step, state, pipeline, num_classes: int,
             should_stop=None) -> dict[str, float] | None:
  """Top-1 (and top-5 above 10 classes) accuracy and loss over the whole test split
  ('eval/...') and, when dataset.validation_examples holds some out, over those
  ('val/...').

  None if `should_stop()` turns true before a batch: a preempted job's grace period
  (30-60 s) can be shorter than an evaluation. At most two batches are in flight, so a
  stop waits for one batch, not for the rest of the split.
  """
  results = {}
  for prefix, arrays, batches in pipeline.eval_splits():
    totals = previous = None
    for batch in batches:
      if should_stop is not None and should_stop():
        return None
      sums = eval_step(state, arrays, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if previous is not None:
        jax.block_until_ready(previous)
      previous = totals
    totals = jax.device_get(totals)
    count = float(totals['count'])
    results[f'{prefix}/accuracy'] = float(totals['correct']) / count
    results[f'{prefix}/loss'] = float(totals['loss']) / count
    if num_classes > 10:
      results[f'{prefix}/top5_accuracy'] = float(totals['correct_top5']) / count
  return results


def best_checkpoint_metric(config) -> str:
  """What the kept 'best' checkpoint is chosen on: the validation hold-out when there is
  one, so that the test split never selects a model; else test accuracy."""
  return 'val/accuracy' if config.dataset.validation_examples else 'eval/accuracy'


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's length and cadence in steps: when it logs, evaluates and saves."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int
  checkpoint_every: int

  @classmethod
  def of(cls, config, num_train: int) -> Schedule:
    """From the config and the training examples; num_train_steps > 0 wins over epochs."""
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
      raise ConfigError(f'batch_size={config.batch_size} exceeds the {num_train} '
                        'training examples; lower batch_size')
    total_steps = config.num_train_steps if config.num_train_steps > 0 else \
        int(config.num_epochs * steps_per_epoch)
    return cls(steps_per_epoch, total_steps,
               eval_every=max(1, int(round(config.eval_every_epochs * steps_per_epoch))),
               log_every=config.log_every_steps, checkpoint_every=config.checkpoint_every_steps)


def input_size(config) -> int:
  """The side of the network's input: augment.resize_to if set, else dataset.image_size."""
  return config.augment.get('resize_to', 0) or config.dataset.image_size


def make_model(config, num_classes: int):
  """The config's network; BN statistics over the global batch unless sync_batch_stats=False."""
  return build_model(config.model, num_classes, half_precision=config.half_precision,
                     bn_axis_name=DATA_AXIS if config.sync_batch_stats else None)


def make_optimizer(config, schedule: Schedule, trainable_mask=None):
  """(optax transformation, the lr multiplier of each step) of the config's recipe."""
  tx = optim.create_optimizer(config, schedule.steps_per_epoch, schedule.total_steps,
                              trainable_mask=trainable_mask)
  return tx, optim.lr_multiplier(config, schedule.steps_per_epoch, schedule.total_steps)


def open_checkpointer(config, workdir: Path) -> checkpoint.Checkpointer:
  """The run's checkpoints: the latest keep_checkpoints, the best and the last good one."""
  return checkpoint.Checkpointer(workdir / 'checkpoints', max_to_keep=config.keep_checkpoints,
                                 best_metric=best_checkpoint_metric(config), best_mode='max')


# ----------------------------------------------------------------------------- state


def create_train_state(model, tx, config, mesh, image_size: int) -> TrainState:
  """Initialises replicated parameters from the seed (identical on any device count)."""
  rng = jax.random.PRNGKey(config.seed)
  init_key, state_key = jax.random.split(rng)

  def init():
    variables = model.init(init_key, jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                           train=False)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=state_key)

  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def abstract_state(state: TrainState, mesh):
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _head_only_mask(model, image_size: int):
  """True on the classifier head only: a linear probe trains nothing else."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, image_size, image_size, 3)))['params']
  return {name: jax.tree.map(lambda _: name == 'head', subtree)
          for name, subtree in shapes.items()}


def load_pretrained(state: TrainState, config, mesh) -> TrainState:
  """Starts from `config.init_from`: converted torchvision weights or a run of this project.

  The backbone's params and BN statistics are copied; the head is kept from the fresh
  initialisation when the class count differs from the pretrained one (e.g. a CIFAR-10
  run fine-tuned on CIFAR-100).
  """
  source_model, variables = pretrained_variables(config.init_from)
  same = lambda model_config: architecture(unrolled(model_config))
  if same(source_model) != same(config.model):
    raise ConfigError(f'init_from holds a {model_name(source_model)} but the config '
                      f'builds a {model_name(config.model)}; set config.model to match')
  source_scanned = source_model.get('scan_blocks', False)
  if config.model.scan_blocks and not source_scanned:
    variables = {name: stack_repeated_blocks(collection)
                 for name, collection in variables.items()}
  elif source_scanned and not config.model.scan_blocks:
    raise ConfigError('init_from holds a model trained with scan_blocks=True; set '
                      '--config.model.scan_blocks=true to start from it')
  params = dict(variables['params'])
  if params['head']['kernel'].shape != state.params['head']['kernel'].shape:
    params['head'] = jax.device_get(state.params['head'])  # new classes: fresh head
  placed = parallel.put({'params': params, 'batch_stats': variables['batch_stats']},
                        parallel.replicated(mesh))
  return state.replace(params=placed['params'], batch_stats=placed['batch_stats'])


def pretrained_variables(init_from: str):
  """(model config, {'params', 'batch_stats'} as host arrays) of `init_from`.

  It is a converted checkpoint (`python -m resnet_jax.convert`, with model.json), or a
  trained run: its workdir, its checkpoints folder, or one step folder in it (else the
  newest step). A damaged or truncated one is a one-line ConfigError.
  """
  from resnet_jax import convert
  path = Path(init_from)
  try:
    if (path / convert.METADATA_FILE).is_file():
      source_model, _, variables = convert.load_converted(path)
      return source_model, variables
    found = _trained_checkpoint(path)
    if found is None:
      raise ConfigError(
          f'init_from={init_from!r} is neither a converted checkpoint (make one with python '
          '-m resnet_jax.convert) nor a trained run (its workdir or checkpoints folder)')
    run_dir, step_dir = found
    record = metrics.read_config_record(run_dir)
    if record is None:
      raise ConfigError(f'init_from={init_from!r}: {run_dir} has no {metrics.CONFIG_FILE}, so '
                        'its model is unknown')
    import orbax.checkpoint as ocp
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as reader:
      stored = reader.metadata(step_dir / checkpoint.STATE_ITEM)
      stored = getattr(stored, 'item_metadata', stored)
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
                            stored)
      restored = reader.restore(step_dir / checkpoint.STATE_ITEM, target)
    variables = {name: jax.tree.map(np.asarray, restored[name])
                 for name in ('params', 'batch_stats')}
    return ml_collections.ConfigDict(record['model']), variables
  except ConfigError:
    raise
  except Exception as error:  # damage shows up as many exception types
    raise ConfigError(f'init_from={init_from!r} cannot be read ({checkpoint.one_line(error)}); '
                      'convert or train it again') from None


def _trained_checkpoint(path: Path) -> tuple[Path, Path] | None:
  """(run workdir, step folder) for a workdir, its checkpoints folder or a step in it."""
  if path.name.isdigit() and (path / checkpoint.STATE_ITEM).is_dir():
    return path.parent.parent, path
  folder = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  if not steps:
    return None
  return folder.parent, folder / str(max(steps))


def _hyperparams_from_config(state: TrainState, config, is_main: bool) -> TrainState:
  """A resumed run trains with the config's learning_rate / weight_decay / momentum.

  They are state (inputs of the compiled step), so a checkpoint carries them; a config
  that changes them on resume wins, and says so.
  """
  saved = optim.hyperparams(state.opt_state)
  changed = {name: float(config[name]) for name, value in saved.items()
             if not np.isclose(value, float(config[name]), rtol=1e-6, atol=0.0)}
  if not changed:
    return state
  if is_main:
    print('Resuming with the config\'s ' + ', '.join(
        f'{name} {saved[name]:g} -> {value:g}' for name, value in changed.items()), flush=True)
  return state.replace(opt_state=optim.with_hyperparams(state.opt_state, **changed))


# ----------------------------------------------------------------------------- loop


class PreemptionFlag:
  """SIGTERM (cluster preemption) or a first Ctrl-C: the loop saves a checkpoint and exits.

  A first Ctrl-C restores SIGINT's default action, so a second one ends the process at
  once, even inside a long computation (steps since the last checkpoint are lost). Until
  `arm()` (training has not started, there is nothing to save) Ctrl-C raises
  KeyboardInterrupt as usual. A SIGINT ignored by the parent (`nohup`, a background job)
  stays ignored.
  """

  SIGNALS = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C'}

  def __init__(self):
    self.requested: str | None = None  # what asked to stop, once something did
    self.armed = False
    self._previous = {}
    for signum in self.SIGNALS:
      if signal.getsignal(signum) is not signal.SIG_IGN:
        self._previous[signum] = signal.signal(signum, self._handle)

  def arm(self) -> None:
    self.armed = True

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if not self.armed:
        raise KeyboardInterrupt
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      # os.write, not print: the handler may interrupt a print to the same stream.
      os.write(2, b'\nCtrl-C: saving a checkpoint, then exiting; press Ctrl-C again to exit '
                  b'at once (losing the steps since the last checkpoint)\n')
    self.requested = self.requested or self.SIGNALS[signum]

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def agreed(self) -> bool:
    """All processes must stop at the same step, or the collectives would hang."""
    if jax.process_count() == 1:
      return self.requested is not None
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested is not None))))


WATCHED_METRICS = ('train/loss', 'train/grad_norm', 'eval/loss', 'val/loss')


class DivergenceGuard:
  """Saves a state only if everything measured since the previous save is finite.

  Measured: the training loss and gradient norm of every step (a mean over a log interval
  is finite only if each step's value is) and the eval loss. A checkpoint becomes the last
  good one once training went on from it to the next save with all of these finite;
  retention never deletes that one (`Checkpointer.mark_good`). When a value is not
  finite, the checkpoints after the last good one are moved aside, so that a rerun, with
  a lower learning rate say, resumes from a state that really is good.
  """

  def __init__(self, ckpt: checkpoint.Checkpointer, last_saved: int | None):
    self.ckpt = ckpt
    self.last_saved = last_saved

  @staticmethod
  def non_finite(measured: Mapping[str, float]) -> str:
    """'train/grad_norm inf' for each watched value that is not finite; '' if none."""
    return ', '.join(f'{name} {value}' for name, value in measured.items()
                     if name in WATCHED_METRICS and not np.isfinite(value))

  def check(self, step: int, measured: Mapping[str, float]) -> None:
    """Raises TrainingDiverged if a watched value of `measured` is not finite."""
    if bad := self.non_finite(measured):
      raise self.diverged(step, bad)

  def save(self, step: int, state, *, metrics=None, force: bool = False) -> None:
    """Saves `state`; the caller has `check`ed everything measured since the last save."""
    if self.last_saved is not None and self.last_saved != step:
      self.ckpt.mark_good(self.last_saved)
    self.ckpt.save(step, state, metrics=metrics, force=force)
    self.last_saved = step

  def diverged(self, step: int, what: str) -> TrainingDiverged:
    good = self.ckpt.last_good_step
    moved = self.ckpt.move_aside_after(good, 'diverged')
    kept = (f'the last good checkpoint is step {good}, where a rerun resumes' if good is not None
            else 'no checkpoint is known good, so a rerun starts from scratch')
    aside = (f' (checkpoint{"s" * (len(moved) > 1)} {", ".join(map(str, moved))} set aside as '
             '<step>.diverged-*)' if moved else '')
    return TrainingDiverged(
        f'{what} by step {step}: training diverged; {kept}{aside}. Lower learning_rate, add '
        'warmup_epochs or set grad_clip_norm.')


def mean_metrics(pending: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(pending)
  return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


def with_prefix(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
  return {f'{prefix}{key}': value for key, value in values.items()}


# ----------------------------------------------------------------------------- start checks


def _prepare_workdir(workdir) -> Path:
  """The workdir, created; a file or an unwritable path is a one-line WorkdirError."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file; give a folder')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise WorkdirError(f'cannot create --workdir {workdir} ({error.strerror}); give '
                                  'a writable folder') from None
  return workdir


def _has_outputs(workdir: Path) -> bool:
  """Whether a start trained anything here: checkpoints, metrics or results."""
  checkpoints = workdir / 'checkpoints'
  return ((workdir / metrics.METRICS_FILE).exists() or (workdir / RESULTS_FILE).exists() or
          (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())))


def check_config_record(config, workdir: Path) -> dict | None:
  """The changes of resumable keys a resume makes; None for a run that starts here.

  Raises ConfigChanged, before anything is written, if the config differs from the run's
  record (config.json, with the changes earlier resumes made) in any other key: a
  different model, data or recipe would continue another network, or report its results
  as "already complete".
  """
  recorded = metrics.read_config_record(workdir)
  if recorded is None or not _has_outputs(workdir):
    return None
  changed = schema.differences(recorded, config)
  refused = {key: change for key, change in changed.items()
             if key not in schema.RESUMABLE_KEYS}
  if refused:
    fresh = f'{workdir}_{schema.point_name({key: new for key, (_, new) in refused.items()})}'
    raise ConfigChanged(
        f'{workdir} holds a run of another config: {schema.describe_differences(refused)}; '
        'a resume may change only the run length, learning_rate, weight_decay, momentum and '
        f'the logging, eval and checkpoint cadence; use a fresh workdir (--workdir={fresh}) or '
        'drop these changes to resume')
  return changed


def start_record(writer: metrics.MetricWriter, workdir: Path, config, step: int,
                  changes: dict | None, resumed: bool) -> None:
  """config.json for a run that starts here; otherwise the resume's changes and step."""
  if changes is None:  # a record left by a start that trained nothing is replaced
    for name in (metrics.CONFIG_FILE, metrics.CONFIG_CHANGES_FILE):
      if writer.enabled:
        (workdir / name).unlink(missing_ok=True)
    writer.write_config(config)
  else:
    writer.write_config_changes(step, changes)
  if resumed or changes is not None:
    writer.mark_resumed(step)


def _out_of_memory(error: BaseException) -> bool:
  return isinstance(error, jax.errors.JaxRuntimeError) and 'RESOURCE_EXHAUSTED' in str(error)


def _check_eval_fits(eval_step, state, pipeline, config) -> None:
  """Runs the eval step on one batch before training: an eval_batch_size that does not
  fit in device memory stops the run now, not after its first epoch, unsaved."""
  batches = pipeline.eval_batches()
  try:
    jax.block_until_ready(eval_step(state, pipeline.test_arrays, next(batches)))
  except Exception as error:  # pylint: disable=broad-except
    if not _out_of_memory(error):
      raise
    raise ConfigError(f'eval_batch_size={config.eval_batch_size} does not fit in device memory '
                      f'({str(error).splitlines()[0][:160]}); lower eval_batch_size') from None
  finally:
    batches.close()


def _newest_step(workdir: Path) -> int | None:
  checkpoints = workdir / 'checkpoints'
  steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] \
      if checkpoints.is_dir() else []
  return max(steps, default=None)


def _one_line_failure(error: Exception, workdir: Path) -> Exception | None:
  """A full disk or device memory as a one-line error naming the fix; None otherwise."""
  newest = _newest_step(workdir)
  resume = (f'a rerun resumes from checkpoint step {newest}' if newest is not None
            else 'no checkpoint was written')
  if (written := checkpoint.disk_full(error)) is not None:
    return WorkdirError(
        f'no space left on device writing {written or workdir}; free space and rerun the same '
        f'command: {resume}, the newest complete one')
  if _out_of_memory(error):
    fix = ('lower batch_size or set half_precision=True' if newest is None else
           'a resume cannot change batch_size or half_precision: use a device with more memory, '
           f'or a fresh workdir ({resume})')
    return ConfigError(f'out of device memory ({str(error).splitlines()[0][:160]}); {fix}')
  return None


# ----------------------------------------------------------------------------- the loop


def run_loop(trainee, schedule: Schedule, step: int, preemption: PreemptionFlag,
             clock: TrainClock) -> tuple[int, bool]:
  """Trains from `step` to `schedule.total_steps`, logging, evaluating and saving on the
  schedule; returns (the step reached, whether SIGTERM or Ctrl-C stopped it after a save).

  `trainee` is one run (train_and_evaluate) or a stack of runs trained as one vmapped
  program (sweeps/vmapped.py); it keeps its state and records and provides
  `active() -> bool` (False once nothing is left to train), `train_step(step) -> metrics`
  (dispatched, still on the device), `log(step, pending, img_per_s)` and `check(step,
  pending)` (the metrics since the last log: recorded, or only checked before a save;
  each raises, or stops what diverged), `evaluate(step, should_stop) -> evaluation or None`
  (None: a signal abandoned it) and `save(step, evaluation or None, force)`.

  A state is saved only after everything measured since the previous save was checked
  (DivergenceGuard). The host runs at most one step ahead of the device, and an
  evaluation stops after the batch in flight, so a signal is acted on within two steps
  or one eval batch.
  """
  pending: list[dict] = []
  stopping = False
  while step < schedule.total_steps and not stopping and trainee.active():
    step_metrics = trainee.train_step(step)
    _bound_in_flight(pending)
    pending.append(step_metrics)
    step += 1
    clock.after_step(step, step_metrics)
    is_last = step == schedule.total_steps
    is_log = step % schedule.log_every == 0
    stopping = preemption.agreed() if jax.process_count() == 1 or is_log else False
    if is_log or is_last or stopping:
      trainee.log(step, pending, clock.interval_img_per_s(step))
      pending = []
    is_eval = step % schedule.eval_every == 0 or is_last
    is_checkpoint = step % schedule.checkpoint_every == 0
    if pending and (is_eval or is_checkpoint):
      trainee.check(step, pending)  # never save a diverged state
    evaluated = None
    if is_eval and not stopping:
      with clock.paused(step):
        evaluated = trainee.evaluate(step, preemption.agreed)
      stopping = evaluated is None
    if evaluated is not None or is_checkpoint or stopping:
      trainee.save(step, evaluated, force=is_last or stopping)
  return step, stopping


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config, workdir) -> dict[str, Any]:
  """Trains and evaluates; resumes from the newest good checkpoint in `workdir`.

  Returns the results (results.json), or {'step', 'preempted', 'signal'} when SIGTERM or
  Ctrl-C stopped it after a save.
  """
  workdir = _prepare_workdir(workdir)
  preemption = PreemptionFlag()  # first, so a SIGTERM during start-up is not lost
  try:
    with checkpoint.WorkdirLock(workdir) as lock:
      if lock.taken_over and jax.process_index() == 0:
        print(f'Took over the lock of pid {lock.taken_over.get("pid")} on host '
              f'{lock.taken_over.get("host")}, which no longer runs', flush=True)
      return _train_and_evaluate(config, workdir, preemption)
  except Exception as error:  # pylint: disable=broad-except
    failure = _one_line_failure(error, workdir)
    if failure is None:
      raise
    raise failure from None
  finally:
    preemption.restore()


def _train_and_evaluate(config, workdir: Path, preemption: PreemptionFlag) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  changes = check_config_record(config, workdir)
  mesh = parallel.data_mesh()
  parallel.check_divisible(config.batch_size, 'batch_size', mesh)

  pipeline = data.make_pipeline(config, mesh)
  schedule = Schedule.of(config, pipeline.num_train)
  model = make_model(config, pipeline.num_classes)
  probe_mask = _head_only_mask(model, input_size(config)) \
      if config.finetune_mode == 'linear_probe' else None
  tx, multiplier = make_optimizer(config, schedule, trainable_mask=probe_mask)
  state = create_train_state(model, tx, config, mesh, input_size(config))

  ckpt = open_checkpointer(config, workdir)
  try:
    state, restored_step = restore_or_initialise(ckpt, state, config, mesh, workdir,
                                                 schedule.steps_per_epoch)
    step = int(jax.device_get(state.step))
    if step > schedule.total_steps:
      raise ConfigChanged(f'{workdir} holds a run trained to step {step}, past this config\'s '
                          f'{schedule.total_steps} steps; use a fresh workdir for a shorter run')
    results_file = workdir / RESULTS_FILE
    if step == schedule.total_steps and results_file.exists():
      ckpt.close()
      if is_main:
        print(f'already complete at step {step}: {results_file}', flush=True)
      return json.loads(results_file.read_text())
    in_state = optim.hyperparams(state.opt_state) if restored_step is not None else {}
    other_changes = {key: change for key, change in (changes or {}).items()
                     if key not in in_state}  # _hyperparams_from_config names those
    if is_main and other_changes:
      print('Resuming with ' + schema.describe_differences(other_changes), flush=True)
  except BaseException:
    ckpt.close()
    raise

  bn_and_dropout_train = config.finetune_mode == 'full'  # frozen BN: running statistics
  train_step = make_train_step(make_local_train_step(
      model, tx, multiplier, config, pipeline.mean, pipeline.std, pipeline.num_classes,
      bn_and_dropout_train), mesh)
  eval_step = make_eval_step(model, config, mesh, pipeline.mean, pipeline.std,
                             pipeline.num_classes)
  try:
    _check_eval_fits(eval_step, state, pipeline, config)
  except BaseException:
    ckpt.close()
    raise
  if preemption.agreed():  # a signal during start-up: nothing trained, nothing to save
    ckpt.close()
    if is_main:
      print(f'{preemption.requested or "SIGTERM"} before the first step: nothing to save; rerun '
            'the same command to start.', flush=True)
    return {'step': step, 'preempted': True, 'signal': preemption.requested}

  writer = metrics.MetricWriter(workdir, enabled=is_main)
  start_record(writer, workdir, config, step, changes, resumed=restored_step is not None)
  progress = metrics.Progress(schedule.total_steps, config.batch_size, schedule.steps_per_epoch,
                              enabled=is_main)
  run = _Run(state, train_step, eval_step, pipeline, DivergenceGuard(ckpt, restored_step),
             writer, progress, schedule)
  start_time = time.time()
  clock = TrainClock(config.batch_size)
  preemption.arm()
  try:
    step, stopped = run_loop(run, schedule, step, preemption, clock)
    if stopped:
      ckpt.wait()
      if is_main:
        print(f'{preemption.requested or "SIGTERM"}: saved checkpoint at step {step}; rerun '
              'the same command to resume.', flush=True)
      return {'step': step, 'preempted': True, 'signal': preemption.requested}
  finally:
    progress.close()
    ckpt.close()
    writer.close()

  if not run.eval_metrics:  # resumed from the final checkpoint, before results were written
    run.eval_metrics = evaluate(eval_step, run.state, pipeline, pipeline.num_classes)
  if not is_main:
    return {'step': step}
  results = final_results(config, step, run.eval_metrics, run.train_metrics, workdir,
                          time.time() - start_time, clock)
  metrics.write_json(results_file, results)
  print(done_line(results, schedule.total_steps, workdir), flush=True)
  return results


def done_line(results: dict[str, Any], total_steps: int, workdir) -> str:
  """The last line of a finished run: model, step, final test (and validation) accuracy,
  loss, time, speed, where. The best test accuracy over evaluations is selection on the
  test set: it stays in results.json as best_test_accuracy and is not shown here."""
  val = (f' | val accuracy {results["val_accuracy"]:.2%}' if 'val_accuracy' in results else '')
  return (f'done: {results["model"]} | step {results["step"]}/{total_steps} | test accuracy '
          f'{results["test_accuracy"]:.2%}{val} | train loss {results["train_loss"]:.4f} | '
          f'{metrics.format_duration(results["wall_s"])} | {results["img_per_s"]:,.0f} img/s '
          f'(compile {results["compile_s"]:.1f} s) | {workdir}')


class _Run:
  """One run, as `run_loop` drives it: its state, input, divergence guard and records."""

  def __init__(self, state: TrainState, train_step, eval_step, pipeline, guard: DivergenceGuard,
               writer: metrics.MetricWriter, progress: metrics.Progress, schedule: Schedule):
    self.state = state
    self._train_step, self._eval_step = train_step, eval_step
    self.pipeline, self.guard, self.writer, self.progress = pipeline, guard, writer, progress
    self.steps_per_epoch = schedule.steps_per_epoch
    self.train_metrics: dict[str, float] = {}  # the last logged means
    self.eval_metrics: dict[str, float] = {}  # the last evaluation

  def active(self) -> bool:
    return True

  def train_step(self, step: int):
    self.state, step_metrics = self._train_step(self.state, self.pipeline.train_arrays,
                                                self.pipeline.train_batch(step))
    return step_metrics

  def log(self, step: int, pending: list[dict], img_per_s: float) -> None:
    self.train_metrics = mean_metrics(pending)
    self.guard.check(step, with_prefix('train/', self.train_metrics))
    self.writer.write(step, {**with_prefix('train/', self.train_metrics),
                             'throughput/img_per_s': img_per_s,
                             'epoch': step / self.steps_per_epoch})
    self.progress.update(step, loss=self.train_metrics['loss'], lr=self.train_metrics['lr'],
                         img_per_s=img_per_s)

  def check(self, step: int, pending: list[dict]) -> None:
    self.guard.check(step, with_prefix('train/', mean_metrics(pending)))

  def evaluate(self, step: int, should_stop) -> dict[str, float] | None:
    evaluated = evaluate(self._eval_step, self.state, self.pipeline, self.pipeline.num_classes,
                         should_stop)
    if evaluated is not None:
      self.guard.check(step, evaluated)
      self.eval_metrics = evaluated
      self.writer.write(step, {**evaluated, 'epoch': step / self.steps_per_epoch})
    return evaluated

  def save(self, step: int, evaluated: dict[str, float] | None, force: bool) -> None:
    self.guard.save(step, self.state, metrics=evaluated, force=force)


def restore_or_initialise(ckpt, state, config, mesh, workdir: Path, steps_per_epoch: int):
  """(state, restored step): the newest good checkpoint, else `init_from`, else `state`."""
  is_main = jax.process_index() == 0
  restored = ckpt.restore_latest(abstract_state(state, mesh))
  if restored is not None:
    step, state = restored
    logging.info('resumed at step %d', step)
    if is_main:
      print(f'Resuming from checkpoint at step {step} (epoch {step / steps_per_epoch:.2f}) in '
            f'{workdir}', flush=True)
    return _hyperparams_from_config(state, config, is_main), step
  if config.init_from:
    state = load_pretrained(state, config, mesh)
    if is_main:
      print(f'Initialised from {config.init_from} ({config.finetune_mode} fine-tuning)',
            flush=True)
  return state, None


def _bound_in_flight(pending: list[dict]) -> None:
  """Waits for the step before the one just dispatched: one step stays queued, so the
  device keeps busy, but a SIGTERM is acted on after a step or two, not after a whole
  log interval of queued ones."""
  if pending:
    jax.block_until_ready(pending[-1]['loss'])


class TrainClock:
  """Training throughput with compilation and evaluation left out.

  The first step of a segment (which compiles) is timed on its own; evaluation runs with
  the clock paused. Intervals end at log points, where metrics are fetched anyway, so the
  clock adds no host synchronisation to the loop.
  """

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.compile_s = 0.0
    self.train_s = 0.0
    self.timed_steps = 0
    self._start = time.time()
    self._interval_start, self._interval_step = self._start, None

  def after_step(self, step: int, outputs) -> None:
    if self._interval_step is None:  # the segment's first step: compile + one step
      jax.block_until_ready(outputs)
      now = time.time()
      self.compile_s = now - self._start
      self._interval_start, self._interval_step = now, step

  def interval_img_per_s(self, step: int) -> float:
    now = time.time()
    steps, seconds = step - self._interval_step, now - self._interval_start
    self.train_s += seconds
    self.timed_steps += steps
    self._interval_start, self._interval_step = now, step
    return steps * self.batch_size / seconds if steps and seconds > 0 else 0.0

  @property
  def img_per_s(self) -> float:
    return self.timed_steps * self.batch_size / self.train_s if self.train_s else 0.0

  @contextlib.contextmanager
  def paused(self, step: int):
    self.interval_img_per_s(step)
    yield
    self._interval_start = time.time()


def _logged(workdir: Path) -> list[dict]:
  """The records of metrics.jsonl over all resumed segments, without the steps a resume
  trained again (metrics.read_metrics)."""
  return metrics.read_metrics(workdir)


def final_results(config, step, eval_metrics, train_metrics, workdir, wall_s,
                  clock: TrainClock) -> dict[str, Any]:
  """What results.json holds: final and best test error, final train error, speed."""
  records = _logged(workdir)
  accuracy = eval_metrics.get('eval/accuracy', float('nan'))
  logged_accuracies = [r['eval/accuracy'] for r in records if r.get('eval/accuracy') is not None]
  best_accuracy = max(logged_accuracies + [accuracy], key=lambda a: -1 if np.isnan(a) else a)
  if not train_metrics:  # resumed from the final checkpoint: the last logged train metrics
    last = next((r for r in reversed(records) if 'train/loss' in r), {})
    train_metrics = {k.removeprefix('train/'): v for k, v in last.items()
                     if k.startswith('train/') and v is not None}
  return {
      'model': model_name(config.model),
      'step': step,
      'test_accuracy': accuracy,
      'test_error': 1.0 - accuracy,
      'best_test_accuracy': best_accuracy,
      'best_test_error': 1.0 - best_accuracy,
      'test_loss': eval_metrics.get('eval/loss', float('nan')),
      **_validation_results(records, eval_metrics),
      'train_loss': train_metrics.get('loss', float('nan')),
      'train_error': 1.0 - train_metrics.get('accuracy', float('nan')),
      'wall_s': wall_s,
      'compile_s': clock.compile_s,
      'img_per_s': clock.img_per_s,
  }


def _validation_results(records: list[dict], eval_metrics: dict) -> dict[str, float]:
  """Final validation accuracy/error, and the test accuracy of the evaluation with the
  best validation accuracy (the model selection a held-out split allows); {} without one."""
  if 'val/accuracy' not in eval_metrics:
    return {}
  evaluations = [r for r in records if r.get('val/accuracy') is not None] + [eval_metrics]
  best = max(evaluations, key=lambda r: -1 if np.isnan(r['val/accuracy']) else r['val/accuracy'])
  return {'val_accuracy': eval_metrics['val/accuracy'],
          'val_error': 1.0 - eval_metrics['val/accuracy'],
          'best_val_accuracy': best['val/accuracy'],
          'test_accuracy_at_best_val': best.get('eval/accuracy', float('nan'))}
