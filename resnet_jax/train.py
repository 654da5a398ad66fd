"""The training engine: `train_and_evaluate(config, workdir)`.

Read top to bottom: the train state, the per-device train and eval steps (pmap style,
run by `jax.shard_map` inside `jax.jit` over the 'data' mesh), then the loop with its
evaluation, metrics, checkpoints, resume and preemption handling.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax import lax
from jax.sharding import PartitionSpec as P

from resnet_jax import augment, checkpoint, datasets, input_pipeline, metrics, optim, parallel
from resnet_jax import models, presets
from resnet_jax.parallel import DATA_AXIS
from resnet_jax.presets import ConfigError


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left untouched."""


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
  arrive normalised already (a pixel_mean or zca normalisation; input_pipeline.local_batch).
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
    images, labels = input_pipeline.local_batch(arrays, batch)
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
    images, labels = input_pipeline.local_batch(arrays, batch)
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


def evaluate(eval_step, state, pipeline, num_classes: int) -> dict[str, float]:
  """Top-1 (and top-5 above 10 classes) accuracy and loss over the whole test split
  ('eval/...') and, when dataset.validation_examples holds some out, over those
  ('val/...')."""
  results = {}
  for prefix, arrays, batches in pipeline.eval_splits():
    totals = None
    for batch in batches:
      sums = eval_step(state, arrays, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
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
  """Starts from converted weights (`python -m resnet_jax.convert`); a new head if needed.

  The backbone's params and BN statistics are copied; the head is kept from the fresh
  initialisation when the class count differs from the pretrained one.
  """
  from resnet_jax import convert
  try:
    source_model, source_classes, variables = convert.load_converted(config.init_from)
  except (FileNotFoundError, convert.ConversionError) as error:
    raise ConfigError(f'init_from={config.init_from!r}: {error}; make one with '
                      'python -m resnet_jax.convert') from None
  same = lambda model_config: presets.architecture(presets.unrolled(model_config))
  if same(source_model) != same(config.model):
    raise ConfigError(f'init_from holds a {presets.model_name(source_model)} but the config '
                      f'builds a {presets.model_name(config.model)}; set config.model to match')
  if config.model.scan_blocks and not source_model.get('scan_blocks', False):
    variables = {name: models.stack_repeated_blocks(collection)
                 for name, collection in variables.items()}
  params = dict(variables['params'])
  if params['head']['kernel'].shape != state.params['head']['kernel'].shape:
    params['head'] = jax.device_get(state.params['head'])  # new classes: fresh head
  placed = parallel.put({'params': params, 'batch_stats': variables['batch_stats']},
                        parallel.replicated(mesh))
  return state.replace(params=placed['params'], batch_stats=placed['batch_stats'])


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
  """Set by SIGTERM (cluster preemption); the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """All processes must stop at the same step, or the collectives would hang."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def _make_pipeline(config, mesh):
  if config.dataset.name == 'imagenet2012':
    num_classes = datasets.num_classes(config.dataset)
    split_sizes = datasets.imagenet_split_sizes(config.dataset)
    pipeline = input_pipeline.StreamingInput(
        config.dataset, mesh, config.seed, config.batch_size, eval_batch(config, mesh),
        num_train=split_sizes['train'], num_test=split_sizes['validation'],
        augment_config=config.augment)
    return pipeline, num_classes, datasets.IMAGENET_MEAN, datasets.IMAGENET_STD
  dataset = datasets.load_in_memory(config.dataset, seed=config.seed)
  pipeline = input_pipeline.InMemoryInput(dataset, mesh, config.seed, config.batch_size,
                                          eval_batch(config, mesh))
  if config.dataset.normalization == 'imagenet':  # what torchvision's pretrained weights expect
    return pipeline, dataset.num_classes, datasets.IMAGENET_MEAN, datasets.IMAGENET_STD
  return pipeline, dataset.num_classes, dataset.mean, dataset.std


def eval_batch(config, mesh) -> int:
  """The eval batch, rounded up to a multiple of the device count (padding is masked)."""
  return -(-config.eval_batch_size // mesh.size) * mesh.size


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(pending)
  return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


def _check_finite(train_metrics: dict[str, float], step: int, ckpt) -> None:
  if not np.isfinite(train_metrics['loss']):
    last = ckpt.latest_step
    kept = f'the last good checkpoint (step {last}) is kept' if last is not None else \
        'no checkpoint was written'
    raise TrainingDiverged(
        f'training loss is {train_metrics["loss"]} by step {step}; stopped without saving, '
        f'{kept}. Lower learning_rate, add warmup_epochs or set grad_clip_norm.')


def train_and_evaluate(config, workdir) -> dict[str, Any]:
  """Trains and evaluates; resumes from the newest good checkpoint in `workdir`."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  preemption = PreemptionFlag()  # first, so a SIGTERM during start-up is not lost
  try:
    return _train_and_evaluate(config, workdir, preemption)
  finally:
    preemption.restore()


def _train_and_evaluate(config, workdir: Path, preemption: PreemptionFlag) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  mesh = parallel.data_mesh()
  parallel.check_divisible(config.batch_size, 'batch_size', mesh)

  pipeline, num_classes, mean, std = _make_pipeline(config, mesh)
  steps_per_epoch = pipeline.num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(f'batch_size={config.batch_size} exceeds the {pipeline.num_train} '
                      'training examples; lower batch_size')
  total_steps = config.num_train_steps if config.num_train_steps > 0 else \
      int(config.num_epochs * steps_per_epoch)
  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))

  model = presets.build_model(config.model, num_classes, half_precision=config.half_precision,
                              bn_axis_name=DATA_AXIS if config.sync_batch_stats else None)
  multiplier = optim.lr_multiplier(config, steps_per_epoch, total_steps)
  model_size = config.augment.resize_to or config.dataset.image_size
  probe_mask = _head_only_mask(model, model_size) if config.finetune_mode == 'linear_probe' \
      else None
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps, trainable_mask=probe_mask)
  state = create_train_state(model, tx, config, mesh, model_size)

  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', max_to_keep=config.keep_checkpoints,
                                 best_metric=best_checkpoint_metric(config), best_mode='max')
  restored = ckpt.restore_latest(abstract_state(state, mesh))
  if restored is not None:
    state = restored[1]
    logging.info('resumed at step %d', restored[0])
    if is_main:
      print(f'Resuming from checkpoint at step {restored[0]} (epoch '
            f'{restored[0] / steps_per_epoch:.2f}) in {workdir}', flush=True)
    state = _hyperparams_from_config(state, config, is_main)
  elif config.init_from:
    state = load_pretrained(state, config, mesh)
    if is_main:
      print(f'Initialised from {config.init_from} ({config.finetune_mode} fine-tuning)',
            flush=True)

  writer = metrics.MetricWriter(workdir, enabled=is_main)
  writer.write_config(config)
  progress = metrics.Progress(total_steps, config.batch_size, steps_per_epoch, enabled=is_main)
  bn_and_dropout_train = config.finetune_mode == 'full'  # frozen BN: running statistics
  train_step = make_train_step(make_local_train_step(
      model, tx, multiplier, config, mean, std, num_classes, bn_and_dropout_train), mesh)
  eval_step = make_eval_step(model, config, mesh, mean, std, num_classes)

  step = int(jax.device_get(state.step))
  results_file = workdir / 'results.json'
  if step >= total_steps and results_file.exists():
    ckpt.close()
    results = json.loads(results_file.read_text())
    if is_main:
      print(f'already complete at step {step}: {results_file}', flush=True)
    return results
  start_time = time.time()
  clock = TrainClock(config.batch_size)
  pending: list[dict] = []
  train_metrics: dict[str, float] = {}
  eval_metrics: dict[str, float] = {}
  try:
    while step < total_steps:
      state, step_metrics = train_step(state, pipeline.train_arrays, pipeline.train_batch(step))
      pending.append(step_metrics)
      step += 1
      clock.after_step(step, state)
      is_last = step == total_steps
      stopping = preemption.agreed() if (jax.process_count() == 1 or
                                         step % config.log_every_steps == 0) else False
      if step % config.log_every_steps == 0 or is_last or stopping:
        train_metrics = _mean_metrics(pending)
        pending = []
        _check_finite(train_metrics, step, ckpt)
        img_per_s = clock.interval_img_per_s(step)
        writer.write(step, {**{f'train/{k}': v for k, v in train_metrics.items()},
                            'throughput/img_per_s': img_per_s, 'epoch': step / steps_per_epoch})
        progress.update(step, loss=train_metrics['loss'], lr=train_metrics['lr'],
                        img_per_s=img_per_s)
      if pending and (step % eval_every == 0 or step % config.checkpoint_every_steps == 0):
        _check_finite(_mean_metrics(pending), step, ckpt)  # never save a diverged state
      if step % eval_every == 0 or is_last:
        with clock.paused(step):
          eval_metrics = evaluate(eval_step, state, pipeline, num_classes)
        writer.write(step, {**eval_metrics, 'epoch': step / steps_per_epoch})
        ckpt.save(step, state, metrics=eval_metrics, force=is_last or stopping)
      elif step % config.checkpoint_every_steps == 0 or stopping:
        ckpt.save(step, state, force=stopping)
      if stopping and not is_last:
        ckpt.wait()
        if is_main:
          print(f'SIGTERM: saved checkpoint at step {step}; rerun the same command to resume.',
                flush=True)
        return {'step': step, 'preempted': True}
  finally:
    progress.close()
    ckpt.close()
    writer.close()

  if not eval_metrics:  # resumed from the final checkpoint, before results were written
    eval_metrics = evaluate(eval_step, state, pipeline, num_classes)
  if not is_main:
    return {'step': step}
  results = final_results(config, step, eval_metrics, train_metrics, workdir,
                           time.time() - start_time, clock)
  results_file.write_text(json.dumps(results, indent=2) + '\n')
  print(f'done: {results["model"]} | step {step}/{total_steps} | test accuracy '
        f'{results["test_accuracy"]:.2%} (best {results["best_test_accuracy"]:.2%}) | '
        f'train loss {results["train_loss"]:.4f} | {metrics.format_duration(results["wall_s"])} '
        f'| {results["img_per_s"]:,.0f} img/s (compile {results["compile_s"]:.1f} s) | '
        f'{workdir}', flush=True)
  return results


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

  def after_step(self, step: int, state) -> None:
    if self._interval_step is None:  # the segment's first step: compile + one step
      jax.block_until_ready(state)
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
  """Every record of metrics.jsonl, which spans all resumed segments of a run."""
  with open(workdir / metrics.METRICS_FILE, encoding='utf-8') as lines:
    return [json.loads(line) for line in lines]


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
      'model': presets.model_name(config.model),
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
