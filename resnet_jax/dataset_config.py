"""Reading the dataset config: the name, image size, path, cache root and train subset.

The in-memory loader, the sources and the ImageNet stream all read these
values here, so each is checked once and a bad one fails with the same
one-line DatasetError naming the fix.
"""

import os
from pathlib import Path

import numpy as np

from resnet_jax.dataset_types import DatasetError

IN_MEMORY = ('cifar10', 'cifar100', 'svhn_cropped', 'synthetic', 'folder')
STREAMED = ('imagenet2012',)

# Fixed seed of the max_train_examples subset: the subset must not move when
# the training seed changes, so runs with different seeds see the same data.
_SUBSET_SEED = 0


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


def train_subset(num_train: int, max_train_examples: int,
                 name: str) -> np.ndarray | None:
  """Sorted indices of a fixed random subset, or None to keep every example."""
  if max_train_examples == -1:
    return None
  if not 1 <= max_train_examples <= num_train:
    raise DatasetError(
        f'dataset.max_train_examples={max_train_examples} is outside 1..{num_train}'
        f' (the size of the {name} train split); use -1 for all examples')
  rng = np.random.default_rng(_SUBSET_SEED)
  return np.sort(rng.choice(num_train, size=max_train_examples, replace=False))
