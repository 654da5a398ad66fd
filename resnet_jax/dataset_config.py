"""Reading the dataset config: the name, image size, path, cache root, validation hold-out
and train subset.

The in-memory loader, the sources and the ImageNet stream all read these
values here, so each is checked once and a bad one fails with the same
one-line DatasetError naming the fix.
"""

import os
from pathlib import Path

import numpy as np

from resnet_jax.errors import DatasetError

IN_MEMORY = ('cifar10', 'cifar100', 'svhn_cropped', 'synthetic', 'folder')
STREAMED = ('imagenet2012',)

# Fixed seed of the max_train_examples subset: the subset must not move when
# the training seed changes, so runs with different seeds see the same data.
_SUBSET_SEED = 0
# Mixed with config.seed to draw the validation hold-out, so that its RNG stream is not
# the one the batch plan draws from (batching uses [seed, epoch]).
_VALIDATION_STREAM = 0x76616C  # 'val'


def dataset_name(dataset_cfg) -> str:
  name = dataset_cfg.get('name', '')
  if name not in IN_MEMORY + STREAMED:
    raise DatasetError(
        f'unknown dataset.name={name!r}; use one of {IN_MEMORY + STREAMED}')
  return name


def image_size(dataset_cfg, name: str) -> int:
  default = 224 if name in STREAMED else 32
  size = int(dataset_cfg.get('image_size', default))
  if size < 1:
    raise DatasetError(f'dataset.image_size={size} must be a positive number of pixels')
  return size


def configured_path(dataset_cfg) -> Path | None:
  path = dataset_cfg.get('path', '')
  return Path(path).expanduser().absolute() if path else None


def cache_root(dataset_cfg) -> Path:
  configured = (dataset_cfg.get('cache_dir', '')
                or os.environ.get('RESNET_JAX_CACHE', '')
                or '~/.cache/resnet_jax')
  return Path(configured).expanduser().absolute()


def train_subset(num_train: int, max_train_examples: int, name: str,
                 held_out: int = 0) -> np.ndarray | None:
  """Sorted indices of a fixed random subset, or None to keep every example.

  `held_out`: validation examples already taken from the split (only for the message).
  """
  if max_train_examples == -1:
    return None
  if not 1 <= max_train_examples <= num_train:
    what = (f'the {num_train + held_out} examples of the {name} train split less the'
            f' {held_out} of dataset.validation_examples') if held_out else \
        f'the size of the {name} train split'
    raise DatasetError(
        f'dataset.max_train_examples={max_train_examples} is outside 1..{num_train}'
        f' ({what}); use -1 for all examples')
  rng = np.random.default_rng(_SUBSET_SEED)
  return np.sort(rng.choice(num_train, size=max_train_examples, replace=False))


def validation_split(labels: np.ndarray, num_classes: int, validation_examples: int,
                     seed: int, name: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(train indices, validation indices), both sorted, or None when nothing is held out.

  Class-balanced: validation_examples / num_classes examples of every class, drawn by
  `seed`, so a run's validation set is fixed by its seed and never trained on. He et al.
  2015 (Sec. 4.2) chose their CIFAR-10 schedule on such a 45k/5k split
  (dataset.validation_examples=5000).
  """
  if validation_examples == 0:
    return None
  per_class, remainder = divmod(validation_examples, num_classes)
  if validation_examples < 0 or remainder or per_class == 0:
    raise DatasetError(
        f'dataset.validation_examples={validation_examples} is not valid: use 0 (none) or a'
        f' positive multiple of the {num_classes} classes of {name}, so every class is'
        ' held out equally')
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() <= per_class:
    raise DatasetError(
        f'dataset.validation_examples={validation_examples} is too large: {name} has only'
        f' {counts.min()} training examples of its rarest class and {per_class} per class'
        ' would be held out; use fewer')
  rng = np.random.default_rng([_VALIDATION_STREAM, seed])
  held_out = np.concatenate([
      rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
      for label in range(num_classes)])
  is_validation = np.zeros(len(labels), bool)
  is_validation[held_out] = True
  return np.flatnonzero(~is_validation), np.flatnonzero(is_validation)
