"""Small datasets as uint8 arrays: loaded once, then held on the accelerator.

CIFAR-10/100, SVHN, image folders and synthetic data (any row of registry.py that is not
streamed) are decoded once into uint8 NHWC numpy arrays (sources.py, formats.py), cached
as raw .npy files (cache.py), and then live on the accelerator; augmentation runs inside
the jitted step (augment.py). `load` also holds out the validation split, draws the
max_train_examples subset (batching.py) and measures or fits the normalisation.

`num_classes` is the class count of any dataset, known without decoding it.

No TensorFlow is needed at run time: archives and folders are parsed with numpy, pickle,
scipy and Pillow; tfds is used only for verified downloads and for reading array_record
copies it prepared.
"""

import dataclasses
from pathlib import Path

import numpy as np

from resnet_jax.data import batching, cache, formats, preprocessing, registry, sources
from resnet_jax.data.formats import ArraySplit, DecodedCopy
from resnet_jax.data.sources import Source
from resnet_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  name: str
  train: ArraySplit  # what training sees: without the validation hold-out
  test: ArraySplit
  num_classes: int
  class_names: tuple[str, ...]
  mean: tuple[float, float, float]  # per-channel mean of the train split, in [0, 1]
  std: tuple[float, float, float]
  validation: ArraySplit | None = None  # dataset.validation_examples held out of train
  # A pixel_mean / zca normalisation fitted on `train` (resnet_jax.preprocessing.fit).
  fitted: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


_SYNTHETIC_TRAIN_SIZE = 1024
_SYNTHETIC_TEST_SIZE = 256


# ----------------------------------------------------------------------------
# The entry points.
# ----------------------------------------------------------------------------


def num_classes(dataset_cfg) -> int:
  """Number of classes, known without decoding the data.

  The row's count where it has one; `dataset.num_classes` for synthetic data; otherwise
  (an image folder) the `num_classes` key if set, else the class names of a cached copy,
  else the class directories under the path's train/ split.
  """
  dataset = registry.lookup(dataset_cfg)
  name = dataset.name
  configured = int(dataset_cfg.get('num_classes', -1))
  if dataset.num_classes is not None:
    fixed = dataset.num_classes
    if configured not in (-1, fixed):
      raise DatasetError(
          f'dataset.num_classes={configured} contradicts {name}, which has'
          f' {fixed} classes; set dataset.num_classes=-1')
    return fixed
  if dataset.synthetic:
    if configured < 2:
      raise DatasetError(
          f'synthetic data needs dataset.num_classes >= 2 (got {configured});'
          ' set e.g. --config.dataset.num_classes=10')
    return configured
  if configured > 0:
    return configured
  return len(_folder_class_names(dataset_cfg))


def load(dataset_cfg, seed: int = 0) -> InMemoryDataset:
  """Loads a small dataset as uint8 arrays, decoding it at most once per cache.

  `seed` draws the `validation_examples` hold-out (and synthetic data). The
  `max_train_examples` subset of what remains is drawn with a fixed RNG, so without a
  hold-out it is the same for every seed; the test split is always complete. mean/std,
  and a pixel_mean or zca normalisation, are fitted on the train split that remains.
  """
  dataset = registry.lookup(dataset_cfg)
  name = dataset.name
  if dataset.streamed:
    raise DatasetError(
        f'{name} is too large to hold in memory; stream it with imagenet_stream'
        f' (the train loop does this for dataset.name={name})')
  entry = None
  if dataset.synthetic:
    copy = _synthetic_copy(dataset_cfg, seed)
    moments = _pixel_moments(copy.train.images)
  else:
    copy, moments, entry = _cached_copy(dataset_cfg)
    expected_classes = _expected_num_classes(dataset_cfg, name)
    if expected_classes not in (None, len(copy.class_names)):
      raise DatasetError(
          f'{copy.source} holds {len(copy.class_names)} classes but {name} needs'
          f' {expected_classes}; point dataset.path at a {name} copy or fix'
          ' dataset.num_classes')
  train_ids, validation_ids = _train_and_validation_ids(
      dataset_cfg, copy.train.labels, len(copy.class_names), seed, name)
  train, validation = copy.train, None
  if train_ids is not None:
    train = ArraySplit(train.images[train_ids], train.labels[train_ids])
    moments = moments[train_ids]
  if validation_ids is not None:
    validation = ArraySplit(copy.train.images[validation_ids], copy.train.labels[validation_ids])
  mean, std = _channel_stats(moments, train.images.shape[1] * train.images.shape[2])
  return InMemoryDataset(
      name=name, train=train, test=copy.test,
      num_classes=len(copy.class_names), class_names=copy.class_names,
      mean=mean, std=std, validation=validation,
      fitted=_fitted_normalization(dataset_cfg, train.images, entry, train_ids))


def _train_and_validation_ids(dataset_cfg, labels: np.ndarray, classes: int, seed: int,
                              name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Indices into the decoded train split: (trained on, held out), None meaning all / none.

  The hold-out comes first, so the max_train_examples subset never contains a
  validation example.
  """
  validation_examples = int(dataset_cfg.get('validation_examples', 0))
  split = batching.validation_split(labels, classes, validation_examples, seed, name)
  remaining, validation_ids = (None, None) if split is None else split
  synthetic = registry.get(name).synthetic  # its train split is max_train_examples already
  max_train = -1 if synthetic else int(dataset_cfg.get('max_train_examples', -1))
  count = len(labels) if remaining is None else len(remaining)
  subset = batching.train_subset(count, max_train, name, held_out=len(labels) - count)
  if subset is None:
    return remaining, validation_ids
  return (subset if remaining is None else remaining[subset]), validation_ids


def _fitted_normalization(dataset_cfg, train_images: np.ndarray, entry: Path | None,
                          train_ids) -> dict[str, np.ndarray]:
  """The pixel_mean or zca arrays of the train split; a ZCA fit is cached with the copy."""
  normalization = dataset_cfg.get('normalization', 'dataset')
  if normalization != 'zca' or entry is None:  # the mean image costs well under a second
    return preprocessing.fit(normalization, train_images)
  path = cache.fitted_path(entry, 'gcn55-zca0.1', train_ids)
  fitted = cache.read_fitted(path)
  if fitted is None:
    fitted = preprocessing.fit(normalization, train_images)
    cache.write_fitted(path, fitted)
  return fitted


def _expected_num_classes(dataset_cfg, name: str) -> int | None:
  """Class count the config promises before loading, or None for 'infer'."""
  if registry.get(name).num_classes is not None:
    return num_classes(dataset_cfg)
  configured = int(dataset_cfg.get('num_classes', -1))
  return configured if configured > 0 else None


def _folder_class_names(dataset_cfg) -> tuple[str, ...]:
  """Class names of an image folder: from the cache if decoded before, else listed."""
  source = sources.resolve(dataset_cfg)
  cached = cache.recorded_class_names(_cache_path(dataset_cfg, source))
  if cached is not None:
    return cached
  return formats.folder_class_names(sources.configured_path(dataset_cfg))


# ----------------------------------------------------------------------------
# Synthetic data.
# ----------------------------------------------------------------------------


def _synthetic_copy(dataset_cfg, seed: int) -> DecodedCopy:
  """Uniform random uint8 images and labels: for benchmarks and smoke runs.

  The train split has max_train_examples (default 1024) examples, plus the
  validation_examples to be held out of it.
  """
  classes = num_classes(dataset_cfg)
  size = registry.image_size(dataset_cfg)
  max_train = int(dataset_cfg.get('max_train_examples', -1))
  if max_train == 0 or max_train < -1:
    raise DatasetError(
        f'dataset.max_train_examples={max_train} must be -1 (default size'
        f' {_SYNTHETIC_TRAIN_SIZE}) or a positive number of synthetic examples')
  rng = np.random.default_rng(seed)

  def split(count):
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, count, dtype=np.int32)
    return ArraySplit(images, labels)

  held_out = max(int(dataset_cfg.get('validation_examples', 0)), 0)
  train = split((max_train if max_train > 0 else _SYNTHETIC_TRAIN_SIZE) + held_out)
  test = split(_SYNTHETIC_TEST_SIZE)
  return DecodedCopy(source='synthetic', train=train, test=test,
                     class_names=tuple(f'class_{i}' for i in range(classes)))


# ----------------------------------------------------------------------------
# Channel statistics.
# ----------------------------------------------------------------------------


def _pixel_moments(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
  """Per-example, per-channel sum and sum of squares, float64 [N, 2, C].

  Cached with the arrays so the statistics of any subset are a cheap sum.
  Exact: a 32x32 image's sum of squares is below 2**27, far inside float64.
  """
  count, channels = len(images), images.shape[-1]
  moments = np.empty((count, 2, channels), np.float64)
  for start in range(0, count, chunk):
    pixels = images[start:start + chunk].reshape(
        min(chunk, count - start), -1, channels).astype(np.float64)
    moments[start:start + chunk, 0] = pixels.sum(axis=1)
    moments[start:start + chunk, 1] = np.einsum('npc,npc->nc', pixels, pixels)
  return moments


def _channel_stats(moments: np.ndarray, pixels_per_image: int):
  """Per-channel mean and std in [0, 1] from per-example moments."""
  totals = moments.sum(axis=0)
  count = len(moments) * pixels_per_image
  mean = totals[0] / count
  std = np.sqrt(np.maximum(totals[1] / count - mean**2, 0.0))
  return tuple(float(m) for m in mean / 255), tuple(float(s) for s in std / 255)


# ----------------------------------------------------------------------------
# Picking a source and caching what it decodes.
# ----------------------------------------------------------------------------


def _cached_copy(dataset_cfg) -> tuple[DecodedCopy, np.ndarray, Path]:
  """The decoded copy, its train moments and its cache entry (read, or decoded and written)."""
  source = sources.resolve(dataset_cfg)
  path = _cache_path(dataset_cfg, source)
  cached = cache.read_entry(path)
  if cached is not None:
    return (*cached, path)
  copy = source.decode()
  moments = _pixel_moments(copy.train.images)
  cache.write_entry(path, copy, moments)
  return copy, moments, path


def _cache_path(dataset_cfg, source: Source) -> Path:
  return cache.entry_path(cache.root(dataset_cfg), registry.lookup(dataset_cfg).name,
                          registry.image_size(dataset_cfg), source.identity)
