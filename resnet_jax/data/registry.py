"""Every dataset, one row each: everything the code knows about it is declared here.

A row says what `dataset.name` means: its classes, its splits, its default image size,
whether it is held in memory or streamed, fixed channel statistics where there are some,
the formats a local copy may be in (formats.FORMATS), its tfds name and the official URLs
to download it from. The loaders read the row; none of them names a dataset.

A new dataset is one `register(Dataset(...))`, here or in the config file that uses it,
plus a parser in formats.py if its files are in a format not read yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from resnet_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str  # what dataset.name selects
  num_classes: int | None  # None: dataset.num_classes, else the class folders of the copy
  formats: tuple[str, ...] = ()  # the formats.FORMATS a copy at dataset.path may be in
  splits: tuple[str, str] = ('train', 'test')  # the training and the evaluation split
  image_size: int = 32  # dataset.image_size when a config leaves it out
  streamed: bool = False  # decoded on the host batch by batch (imagenet.py); else in memory
  # Per-channel mean/std in [0, 1] used instead of measuring the train split; None: measured.
  mean: tuple[float, float, float] | None = None
  std: tuple[float, float, float] | None = None
  tfds_name: str | None = None  # the name of a tfds-prepared copy (a tfds data_dir)
  # The official files, as tfds registers them with their sizes and sha256 checksums
  # ({'archive': url} for one tarball; otherwise one entry per file).
  download: Mapping[str, str] = dataclasses.field(default_factory=dict)
  synthetic: bool = False  # uniform random images drawn from the seed; nothing is read


_DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
  """Adds a row; registering the same row again is harmless, another under a taken name is not."""
  known = _DATASETS.get(dataset.name)
  if known is not None and known != dataset:
    raise ValueError(f'dataset {dataset.name!r} is registered already, as {known}')
  _DATASETS[dataset.name] = dataset
  return dataset


def get(name: str) -> Dataset:
  if name not in _DATASETS:
    raise DatasetError(f'unknown dataset.name={name!r}; use one of {tuple(_DATASETS)}')
  return _DATASETS[name]


def lookup(dataset_cfg) -> Dataset:
  """The row of a dataset config (`config.dataset`)."""
  return get(dataset_cfg.get('name', ''))


def accepting(data_format: str) -> tuple[str, ...]:
  """The datasets whose copies may be in `data_format`."""
  return tuple(name for name, dataset in _DATASETS.items() if data_format in dataset.formats)


def image_size(dataset_cfg) -> int:
  """dataset.image_size, or the dataset's own default."""
  size = int(dataset_cfg.get('image_size', lookup(dataset_cfg).image_size))
  if size < 1:
    raise DatasetError(f'dataset.image_size={size} must be a positive number of pixels')
  return size


# Official URLs, exactly as tfds registers them with sizes and sha256 checksums.
register(Dataset('cifar10', 10, formats=('cifar10-python', 'cifar10-binary', 'image-folder'),
                 tfds_name='cifar10', download={
                     'archive': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'}))
register(Dataset('cifar100', 100,
                 formats=('cifar100-python', 'cifar100-binary', 'image-folder'),
                 tfds_name='cifar100', download={
                     'archive': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'}))
register(Dataset('svhn_cropped', 10, formats=('svhn-mat', 'image-folder'),
                 tfds_name='svhn_cropped', download={
                     'train_32x32.mat': 'http://ufldl.stanford.edu/housenumbers/train_32x32.mat',
                     'test_32x32.mat': 'http://ufldl.stanford.edu/housenumbers/test_32x32.mat'}))
register(Dataset('synthetic', None, synthetic=True))
register(Dataset('folder', None, formats=('image-folder',)))
# The customary ImageNet RGB statistics (torchvision, the Flax example), instead of a pass
# over 1.28M JPEGs; also what `dataset.normalization='imagenet'` applies to other datasets.
register(Dataset('imagenet2012', 1000, splits=('train', 'validation'), image_size=224,
                 streamed=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 tfds_name='imagenet2012'))
