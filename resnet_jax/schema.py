"""The config schema: every config key with its default, the one early check of a whole
config, the names of overrides, and how a run's recorded config differs from a config.

Config files in configs/ and experiments/ start from `default_config()` and change what
their recipe needs (the recipes several of them share are configs/recipes.py). Key names
follow the Flax examples where those exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from resnet_jax import metrics
from resnet_jax.data import imagenet, preprocessing, registry
from resnet_jax.model import architecture, default_model_config
from resnet_jax.errors import ConfigError

LR_SCHEDULES = ('step', 'cosine', 'constant')
PAD_MODES = ('mean', 'black', 'reflect')
# The keys a resumed run may change (README, "Resuming"): its length, the optimiser values
# that live in the train state (optim.py), and how often it logs, evaluates and saves,
# how large its eval batches are, where the data cache is, and the benchmark's step counts.
# Any other change makes a different experiment; a resume refuses it.
RESUMABLE_KEYS = ('num_train_steps', 'num_epochs', 'learning_rate', 'weight_decay', 'momentum',
                  'log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
                  'keep_checkpoints', 'eval_batch_size', 'dataset.cache_dir',
                  'bench_warmup_steps', 'bench_steps')
OPTIMIZERS = ('sgd',)
FINETUNE_MODES = ('full', 'linear_probe', 'frozen_bn')


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = default_model_config()

  config.dataset = ml_collections.ConfigDict(dict(
      name='cifar10',  # a row of resnet_jax/data/registry.py: cifar10 | cifar100 | svhn_cropped
      # | imagenet2012 | synthetic | folder, or one a config file registers
      path='',  # '' fetches through tfds; else a local archive, folder or tfds data_dir
      max_train_examples=-1,  # -1 = the whole train split
      image_size=32,
      num_classes=-1,  # -1 = from the dataset
      cache_dir='',  # '' = $RESNET_JAX_CACHE or ~/.cache/resnet_jax
      # How pixels become inputs (resnet_jax/data/preprocessing.py): 'dataset' per-channel mean/std
      # of the train split | 'imagenet' ImageNet's, for pretrained weights | 'pixel_mean'
      # the train split's mean image subtracted (He et al. 2015) | 'zca' GCN + ZCA
      # whitening fitted on the train split (WRN Table 4, via pylearn2).
      normalization='dataset',
      # Held out of the train split, class-balanced and drawn by `seed`, evaluated as val/*;
      # the best checkpoint is then chosen on it. He et al. 2015 used 5000 (45k/5k). 0 = none.
      validation_examples=0,
  ))
  # He et al. 2015 CIFAR augmentation, applied on the device inside the train step.
  config.augment = ml_collections.ConfigDict(dict(
      crop_padding=4,  # pad then random crop back to image_size; 0 = off
      # 'mean': zeros after normalisation, i.e. the mean colour (He et al.'s mean-subtracted
      # Caffe inputs; fb.resnet.torch normalises, then pads with 0) | 'black': zero pixels
      # before normalisation (torchvision's RandomCrop on images) | 'reflect' (WRN)
      pad_mode='mean',
      flip=True,  # random horizontal flip
      cutout=0,  # side of a cutout square (DeVries & Taylor 2017); 0 = off
      resize_to=0,  # resize on the device to this side (e.g. 32 px up to 224); 0 = off
      # Streamed ImageNet only (resnet_jax/data/imagenet.py):
      train_crop='random_resized',  # 'random_resized' (torchvision) | 'scale' (He et al. 2015)
      scale_range=(256, 480),  # 'scale': the shorter side is resized to a size drawn from this
      pca_noise=0.0,  # std of AlexNet's PCA colour noise (fb.resnet.torch: 0.1); 0 = off
      eval_crops=1,  # 1: centre 224 of the image resized to 256 | 10: ten-crop, logits averaged
  ))

  config.batch_size = 128  # global, split over all devices of all hosts
  config.eval_batch_size = 1000  # global
  config.num_epochs = 200
  config.num_train_steps = -1  # -1 = use num_epochs
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.lr_schedule = 'step'  # step | cosine | constant
  config.lr_boundaries_epochs = (60, 120, 160)
  config.lr_boundaries_steps = ()  # when set, replaces lr_boundaries_epochs (He et al. count iterations)
  config.lr_decay_factor = 0.2
  config.warmup_epochs = 0.0
  # He et al. 2015 (Sec. 4.2) start ResNet-110 and -1202 at lr/10 for 400 iterations:
  # the first `constant_warmup_steps` steps train at constant_warmup_factor x the schedule.
  # -1 = as the paper: 400 when model.depth >= 110, else 0.
  config.constant_warmup_steps = 0
  config.constant_warmup_factor = 0.1
  config.momentum = 0.9
  config.nesterov = True
  # Zero the momentum buffer at each lr drop of the step schedule, as the Wide ResNet code
  # does (optim.momentum_with_resets); Caffe and fb.resnet.torch keep it.
  config.reset_momentum_at_lr_drops = False
  config.weight_decay = 5e-4  # L2 added to the gradient, as torch's SGD and the papers do
  config.decay_bn_and_bias = True  # the papers decay every parameter; False exempts BN/bias
  config.label_smoothing = 0.0
  config.grad_clip_norm = 0.0  # global-norm clipping; 0 = off

  config.half_precision = False  # bfloat16 compute, float32 params and BN statistics
  config.sync_batch_stats = True  # BN statistics over the global batch (all devices)
  config.seed = 0

  config.log_every_steps = 100
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # the latest K are kept, and the best by eval accuracy

  config.init_from = ''  # a converted or trained checkpoint directory to start from
  config.finetune_mode = 'full'  # full | linear_probe | frozen_bn

  config.bench_warmup_steps = 2  # --mode=bench: untimed steps after compilation
  config.bench_steps = 10  # --mode=bench: timed steps
  return config


def _check_positive(config, key: str) -> None:
  if config[key] <= 0:
    raise ConfigError(f'{key}={config[key]} is not valid: it must be > 0')


def _check_choice(config, key: str, allowed, prefix: str = '') -> None:
  if config[key] not in allowed:
    raise ConfigError(f'{prefix}{key}={config[key]!r} is not valid; allowed: '
                      f'{", ".join(repr(a) for a in allowed)}')


def validate(config) -> None:
  """Raises ConfigError (one line naming the fix) before anything runs."""
  architecture(config.model)
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'eval_every_epochs'):
    _check_positive(config, key)
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError('set num_epochs > 0, or num_train_steps > 0 to count steps instead')
  if config.learning_rate < 0 or config.weight_decay < 0:
    raise ConfigError('learning_rate and weight_decay must be >= 0')
  if not 0 <= config.momentum < 1:
    raise ConfigError(f'momentum={config.momentum} is not valid: use 0 <= momentum < 1')
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f'label_smoothing={config.label_smoothing} is not valid: use [0, 1)')
  if config.warmup_epochs < 0 or config.grad_clip_norm < 0:
    raise ConfigError('warmup_epochs and grad_clip_norm must be >= 0')
  if config.constant_warmup_steps < -1 or not 0 < config.constant_warmup_factor <= 1:
    raise ConfigError(f'constant_warmup_steps={config.constant_warmup_steps} / '
                      f'constant_warmup_factor={config.constant_warmup_factor} are not valid: '
                      'use steps >= 0 (-1: 400 at depth >= 110) and 0 < factor <= 1')
  _check_choice(config, 'lr_schedule', LR_SCHEDULES)
  _check_choice(config, 'optimizer', OPTIMIZERS)
  _check_choice(config, 'finetune_mode', FINETUNE_MODES)
  _validate_data(config)
  if config.finetune_mode != 'full' and not config.init_from:
    raise ConfigError(f'finetune_mode={config.finetune_mode!r} needs pretrained weights: set '
                      '--config.init_from=<dir from python -m resnet_jax.convert, or a '
                      'trained run>')
  for key in ('lr_boundaries_epochs', 'lr_boundaries_steps'):
    boundaries = list(config[key])
    if boundaries != sorted(boundaries) or any(b <= 0 for b in boundaries):
      raise ConfigError(f'{key}={tuple(boundaries)} must be increasing and > 0')


def _validate_data(config) -> None:
  """The dataset.* and augment.* keys; what depends on the data itself (class counts,
  split sizes) is checked when it is loaded, with the same one-line errors."""
  dataset, augment = config.dataset, config.augment
  streamed = registry.lookup(dataset).streamed
  if dataset.image_size < 8:
    raise ConfigError(f'dataset.image_size={dataset.image_size} is too small; use >= 8')
  _check_choice(dataset, 'normalization', preprocessing.NORMALIZATIONS, 'dataset.')
  if dataset.normalization == 'zca' and dataset.image_size > 32:
    raise ConfigError(f"dataset.normalization='zca' whitens with a (3 x image_size^2)^2 matrix, "
                      f'fitted in time cubic in its side (3072 at 32 px: 90-98 s on 2 CPU cores); '
                      f'image_size={dataset.image_size} is too large: use 32 or less')
  if streamed and dataset.normalization in preprocessing.FITTED:
    raise ConfigError(f'dataset.normalization={dataset.normalization!r} is fitted on an '
                      f'in-memory train split; for {dataset.name} use \'imagenet\'')
  if dataset.validation_examples < 0 or (streamed and dataset.validation_examples):
    raise ConfigError(f'dataset.validation_examples={dataset.validation_examples} is not valid: '
                      'use 0 or a positive multiple of the class count (in-memory datasets; '
                      'imagenet2012 evaluates on its own validation split)')
  _check_choice(augment, 'pad_mode', PAD_MODES, 'augment.')
  if augment.crop_padding < 0 or augment.cutout < 0 or augment.resize_to < 0:
    raise ConfigError('augment.crop_padding, augment.cutout and augment.resize_to must be >= 0 '
                      '(0 = off)')
  _check_choice(augment, 'train_crop', imagenet.TRAIN_CROPS, 'augment.')
  _check_choice(augment, 'eval_crops', imagenet.EVAL_CROPS, 'augment.')
  low, high = (tuple(augment.scale_range) + (0, 0))[:2]
  if augment.train_crop == 'scale' and (len(augment.scale_range) != 2 or
                                        not dataset.image_size <= low <= high):
    raise ConfigError(f'augment.scale_range={tuple(augment.scale_range)} is not valid: use '
                      f'(low, high) with dataset.image_size={dataset.image_size} <= low <= high')
  if augment.pca_noise < 0:
    raise ConfigError(f'augment.pca_noise={augment.pca_noise} must be >= 0 (0 = off)')
  imagenet_only = {'augment.train_crop': augment.train_crop != 'random_resized',
                   'augment.eval_crops': augment.eval_crops != 1,
                   'augment.pca_noise': augment.pca_noise > 0}
  misplaced = [key for key, changed in imagenet_only.items() if changed]
  if misplaced and not streamed:
    raise ConfigError(f'{", ".join(misplaced)}: only for the streamed imagenet2012 pipeline '
                      '(ImageNet crops and colour statistics); leave the default for '
                      f'dataset.name={dataset.name!r}')


# ----------------------------------------------------------------------------- names

# A workdir named from --config.x=y overrides (launch.py) or a sweep point (sweeps/spec.py):
# at most _MAX_NAME characters of letters, digits and ._=,+-
_MAX_NAME = 120
_SAFE = re.compile(r'[^A-Za-z0-9._=,+-]')


def _format_value(value) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return '-'.join(_format_value(v) for v in value) or 'empty'
  return str(value)


def short_keys(paths: Iterable[str]) -> dict[str, str]:
  """The last path component ('model.depth' -> 'depth'), or the full path where that clashes."""
  paths = list(dict.fromkeys(paths))
  last = [path.rsplit('.', 1)[-1] for path in paths]
  return {path: short if last.count(short) == 1 else path for path, short in zip(paths, last)}


def point_name(overrides: Mapping[str, Any], keys: dict[str, str] | None = None) -> str:
  """A short, filesystem-safe, deterministic folder name for {config path: value}:
  'depth=20,shortcut=A,seed=0'; `keys` names the paths (default: short_keys of these)."""
  if not overrides:
    return 'base'
  keys = keys or short_keys(overrides)
  name = ','.join(f'{keys[path]}={_format_value(value)}' for path, value in overrides.items())
  name = _SAFE.sub('_', name)
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_MAX_NAME - 11]}~{digest}'
  return name


# ----------------------------------------------------------------------------- records


def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differences(recorded: Mapping[str, Any], config) -> dict[str, tuple[Any, Any]]:
  """{key: (recorded value, value now)} for each key of `config` that differs from a
  run's record (`metrics.read_config_record`).

  A key the record lacks was added to the code after the run started; the run used what
  is now its default. Keys the code no longer has are not compared.
  """
  now = _flat(metrics.config_as_json(config))
  then = _flat(recorded)
  defaults = _flat(metrics.config_as_json(default_config()))
  missing = object()
  changed = {}
  for key, value in now.items():
    old = then.get(key, defaults.get(key, missing))
    if old != value:
      changed[key] = (None if old is missing else old, value)
  return changed


def describe_differences(changed: Mapping[str, tuple[Any, Any]], limit: int = 6) -> str:
  """'model.shortcut 'A' -> 'none', seed 0 -> 1' (the first `limit`, then a count)."""
  shown = [f'{key} {old!r} -> {new!r}' for key, (old, new) in list(changed.items())[:limit]]
  more = f' and {len(changed) - limit} more' if len(changed) > limit else ''
  return ', '.join(shown) + more
