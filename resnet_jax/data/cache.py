"""The decoded-array cache: one directory of raw .npy files per dataset copy.

Decoding a copy (tens of thousands of JPEGs, or a download) costs seconds to
minutes; reading the arrays back costs milliseconds. An entry is written
atomically, and a damaged one is deleted and rebuilt rather than trusted.

An entry also keeps what was fitted on a train subset of it (a ZCA matrix: 90-98 s of
numpy for CIFAR-10 on 2 CPU cores), one .npz per subset and recipe, beside the arrays.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np

from resnet_jax.data.formats import ArraySplit, DecodedCopy

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_CACHE_ARRAYS = {  # file stem -> (dtype, ndim)
    'train_images': (np.uint8, 4), 'train_labels': (np.int32, 1),
    'train_moments': (np.float64, 3),
    'test_images': (np.uint8, 4), 'test_labels': (np.int32, 1),
}


def root(dataset_cfg) -> Path:
  """dataset.cache_dir, else $RESNET_JAX_CACHE, else ~/.cache/resnet_jax."""
  configured = (dataset_cfg.get('cache_dir', '')
                or os.environ.get('RESNET_JAX_CACHE', '')
                or '~/.cache/resnet_jax')
  return Path(configured).expanduser().absolute()


def entry_path(cache_root: Path, name: str, image_size: int, identity: tuple) -> Path:
  """The cache directory of a source: keyed by its identity and the image size.

  The identity holds the absolute path with its size and mtime (every file's,
  for a directory), so a changed copy gets a fresh entry. Subsetting happens
  after loading, so max_train_examples is not part of the key.
  """
  key = json.dumps([_CACHE_VERSION, name, image_size, list(identity)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  return cache_root / f'{name}-{digest}'


def read_entry(path: Path) -> tuple[DecodedCopy, np.ndarray] | None:
  """A cache entry's copy and train moments, or None when it is absent or unreadable."""
  if not path.is_dir():
    return None
  try:
    meta = json.loads((path / 'meta.json').read_text())
    arrays = {stem: np.load(path / f'{stem}.npy', allow_pickle=False)
              for stem in _CACHE_ARRAYS}
    _check_cached_arrays(arrays, meta)
  except Exception as err:  # noqa: BLE001 - any damage means "rebuild".
    log.warning('Ignoring unreadable dataset cache %s (%s: %s); rebuilding it.',
                path, type(err).__name__, err)
    shutil.rmtree(path, ignore_errors=True)
    return None
  copy = DecodedCopy(
      source=meta['source'],
      train=ArraySplit(arrays['train_images'], arrays['train_labels']),
      test=ArraySplit(arrays['test_images'], arrays['test_labels']),
      class_names=tuple(meta['class_names']))
  return copy, arrays['train_moments']


def _check_cached_arrays(arrays: dict[str, np.ndarray], meta: dict) -> None:
  for stem, (dtype, ndim) in _CACHE_ARRAYS.items():
    if arrays[stem].dtype != dtype or arrays[stem].ndim != ndim:
      raise ValueError(f'{stem}.npy has dtype {arrays[stem].dtype} and'
                       f' {arrays[stem].ndim} dims')
  for split in ('train', 'test'):
    if len(arrays[f'{split}_images']) != len(arrays[f'{split}_labels']):
      raise ValueError(f'{split} images and labels differ in length')
  if len(arrays['train_moments']) != len(arrays['train_labels']):
    raise ValueError('train moments and labels differ in length')
  if meta.get('version') != _CACHE_VERSION or not meta.get('class_names'):
    raise ValueError('meta.json is from another cache version')


def write_entry(path: Path, copy: DecodedCopy, moments: np.ndarray) -> None:
  """Writes an entry atomically: a temporary directory renamed into place.

  A failure to write only costs the next run a decode, so it is logged, not raised.
  """
  arrays = {
      'train_images': copy.train.images, 'train_labels': copy.train.labels,
      'train_moments': moments,
      'test_images': copy.test.images, 'test_labels': copy.test.labels,
  }
  meta = {'version': _CACHE_VERSION, 'source': copy.source,
          'class_names': list(copy.class_names)}
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
  except OSError as err:
    log.warning('Cannot write dataset cache under %s (%s); continuing without it.',
                path.parent, err)
    return
  try:
    for stem, array in arrays.items():
      np.save(staging / f'{stem}.npy', array, allow_pickle=False)
    (staging / 'meta.json').write_text(json.dumps(meta))
    os.replace(staging, path)
  except OSError as err:  # Out of space, or another process won the race.
    if not path.is_dir():
      log.warning('Cannot write dataset cache %s (%s); continuing without it.',
                  path, err)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def recorded_class_names(path: Path) -> tuple[str, ...] | None:
  """Class names recorded by the cache entry at `path`, if one exists."""
  try:
    return tuple(json.loads((path / 'meta.json').read_text())['class_names'])
  except (OSError, ValueError, KeyError):
    return None


def fitted_path(entry: Path, recipe: str, train_ids) -> Path:
  """Where arrays fitted with `recipe` on the entry's train examples `train_ids` live.

  `train_ids` (None = every example) is part of the key: a validation hold-out or a
  max_train_examples subset changes what is fitted.
  """
  ids = b'all' if train_ids is None else np.ascontiguousarray(train_ids, np.int64).tobytes()
  digest = hashlib.sha256(recipe.encode() + b'|' + ids).hexdigest()[:20]
  return entry / f'fitted-{recipe}-{digest}.npz'


def read_fitted(path: Path) -> dict[str, np.ndarray] | None:
  """Arrays written by `write_fitted`, or None when absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as stored:
      return {name: stored[name] for name in stored.files}
  except Exception as err:  # noqa: BLE001 - any damage means "fit again".
    log.warning('Ignoring unreadable %s (%s: %s); fitting again.', path, type(err).__name__, err)
    return None


def write_fitted(path: Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes atomically into an existing cache entry; a failure is only logged."""
  if not path.parent.is_dir():
    return
  staging = None
  try:
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    with os.fdopen(handle, 'wb') as out:
      np.savez(out, **arrays)
    os.replace(staging, path)
  except OSError as err:  # Out of space, or a read-only cache.
    log.warning('Cannot write %s (%s); continuing without it.', path, err)
    if staging is not None:
      Path(staging).unlink(missing_ok=True)
