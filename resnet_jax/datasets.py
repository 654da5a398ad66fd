"""Datasets: in-memory uint8 arrays for small datasets, a grain stream for ImageNet.

Small datasets (CIFAR-10/100, SVHN, image folders, synthetic data) are decoded
once into uint8 NHWC numpy arrays, cached as raw .npy files, and then live on
the accelerator; augmentation runs inside the jitted step (resnet_jax.augment).
Batches are chosen by index from a permutation that depends only on
(seed, epoch), so any step can be recomputed on resume and the order does not
depend on how many devices or processes share the batch.

ImageNet streams from a tfds-prepared copy (`tfds.data_source`, array_record)
through grain, with the same seeded index plan, so resuming at a step replays
exactly the batches a run without interruption would have seen.

No TensorFlow is needed at run time: archives and folders are parsed here with
numpy, pickle, scipy and Pillow; tfds is used only for verified downloads and
for reading array_record copies it prepared.
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
from pathlib import Path
import pickle
import posixpath
import shutil
import socket
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class DatasetError(ValueError):
  """A dataset problem the user can fix; the message is one line naming the fix."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  images: np.ndarray  # uint8 [N, H, W, 3], NHWC
  labels: np.ndarray  # int32 [N]


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  name: str
  train: ArraySplit
  test: ArraySplit
  num_classes: int
  class_names: tuple[str, ...]
  mean: tuple[float, float, float]  # per-channel mean of the train split, in [0, 1]
  std: tuple[float, float, float]


IN_MEMORY = ('cifar10', 'cifar100', 'svhn_cropped', 'synthetic', 'folder')
STREAMED = ('imagenet2012',)
_FIXED_NUM_CLASSES = {
    'cifar10': 10, 'cifar100': 100, 'svhn_cropped': 10, 'imagenet2012': 1000}

_SYNTHETIC_TRAIN_SIZE = 1024
_SYNTHETIC_TEST_SIZE = 256
# Fixed seed of the max_train_examples subset: the subset must not move when
# the training seed changes, so runs with different seeds see the same data.
_SUBSET_SEED = 0

_ACCEPTED_FORMATS = (
    'a CIFAR python or binary tarball (or its extracted directory), a directory'
    ' with SVHN train_32x32.mat and test_32x32.mat, an image-folder tree'
    ' train/<class>/<image> + test/<class>/<image> (directory, .tar, .tar.gz'
    ' or .tgz), or a tfds data_dir holding the prepared dataset')


def _dataset_name(dataset_cfg) -> str:
  name = dataset_cfg.get('name', '')
  if name not in IN_MEMORY + STREAMED:
    raise DatasetError(
        f'unknown dataset.name={name!r}; use one of {IN_MEMORY + STREAMED}')
  return name


def _image_size(dataset_cfg, name: str) -> int:
  default = 224 if name in STREAMED else 32
  size = int(dataset_cfg.get('image_size', default))
  if size < 1:
    raise DatasetError(f'dataset.image_size={size} must be a positive number of pixels')
  return size


def _configured_path(dataset_cfg) -> Path | None:
  path = dataset_cfg.get('path', '')
  return Path(path).expanduser().absolute() if path else None


def _cache_root(dataset_cfg) -> Path:
  configured = (dataset_cfg.get('cache_dir', '')
                or os.environ.get('RESNET_JAX_CACHE', '')
                or '~/.cache/resnet_jax')
  return Path(configured).expanduser().absolute()


def _default_tfds_data_dir() -> Path:
  """tfds's default data_dir, read at call time ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  return Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


# ----------------------------------------------------------------------------
# Public entry points for in-memory datasets.
# ----------------------------------------------------------------------------


def num_classes(dataset_cfg) -> int:
  """Number of classes, known without decoding the data.

  Fixed for the named datasets; `dataset.num_classes` for synthetic data; for
  'folder' the `num_classes` key if set, else the class names of a cached copy,
  else the class directories under the path's train/ split.
  """
  name = _dataset_name(dataset_cfg)
  configured = int(dataset_cfg.get('num_classes', -1))
  if name in _FIXED_NUM_CLASSES:
    fixed = _FIXED_NUM_CLASSES[name]
    if configured not in (-1, fixed):
      raise DatasetError(
          f'dataset.num_classes={configured} contradicts {name}, which has'
          f' {fixed} classes; set dataset.num_classes=-1')
    return fixed
  if name == 'synthetic':
    if configured < 2:
      raise DatasetError(
          f'synthetic data needs dataset.num_classes >= 2 (got {configured});'
          ' set e.g. --config.dataset.num_classes=10')
    return configured
  if configured > 0:
    return configured
  return len(_folder_class_names(dataset_cfg))


def load_in_memory(dataset_cfg, seed: int = 0) -> InMemoryDataset:
  """Loads a small dataset as uint8 arrays, decoding it at most once per cache.

  `seed` only affects synthetic data. A `max_train_examples` subset is drawn
  with a fixed RNG, so it is the same for every seed; the test split is always
  complete. mean/std are those of the (subset) train split.
  """
  name = _dataset_name(dataset_cfg)
  if name not in IN_MEMORY:
    raise DatasetError(
        f'{name} is too large to hold in memory; stream it with imagenet_stream'
        ' (the train loop does this for dataset.name=imagenet2012)')
  if name == 'synthetic':
    return _synthetic_dataset(dataset_cfg, seed)
  copy, moments = _cached_copy(dataset_cfg, name)
  expected_classes = _expected_num_classes(dataset_cfg, name)
  if expected_classes not in (None, len(copy.class_names)):
    raise DatasetError(
        f'{copy.source} holds {len(copy.class_names)} classes but {name} needs'
        f' {expected_classes}; point dataset.path at a {name} copy or fix'
        ' dataset.num_classes')
  subset = _train_subset(len(copy.train.labels),
                         int(dataset_cfg.get('max_train_examples', -1)), name)
  train = copy.train
  if subset is not None:
    train = ArraySplit(train.images[subset], train.labels[subset])
    moments = moments[subset]
  mean, std = _channel_stats(moments, train.images.shape[1] * train.images.shape[2])
  return InMemoryDataset(
      name=name, train=train, test=copy.test,
      num_classes=len(copy.class_names), class_names=copy.class_names,
      mean=mean, std=std)


def _expected_num_classes(dataset_cfg, name: str) -> int | None:
  """Class count the config promises before loading, or None for 'infer'."""
  if name in _FIXED_NUM_CLASSES:
    return num_classes(dataset_cfg)
  configured = int(dataset_cfg.get('num_classes', -1))
  return configured if configured > 0 else None


def _train_subset(num_train: int, max_train_examples: int,
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


# ----------------------------------------------------------------------------
# Synthetic data.
# ----------------------------------------------------------------------------


def _synthetic_dataset(dataset_cfg, seed: int) -> InMemoryDataset:
  """Uniform random uint8 images and labels: for benchmarks and smoke runs."""
  classes = num_classes(dataset_cfg)
  size = _image_size(dataset_cfg, 'synthetic')
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

  train = split(max_train if max_train > 0 else _SYNTHETIC_TRAIN_SIZE)
  test = split(_SYNTHETIC_TEST_SIZE)
  mean, std = _channel_stats(_pixel_moments(train.images), size * size)
  return InMemoryDataset(
      name='synthetic', train=train, test=test, num_classes=classes,
      class_names=tuple(f'class_{i}' for i in range(classes)),
      mean=mean, std=std)


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
# Cache: decoded arrays as raw .npy files, one directory per source.
# ----------------------------------------------------------------------------

_CACHE_VERSION = 1
_CACHE_ARRAYS = {  # file stem -> (dtype, ndim)
    'train_images': (np.uint8, 4), 'train_labels': (np.int32, 1),
    'train_moments': (np.float64, 3),
    'test_images': (np.uint8, 4), 'test_labels': (np.int32, 1),
}


@dataclasses.dataclass(frozen=True)
class _DecodedCopy:
  """Both splits of one dataset copy, before any subsetting."""
  source: str
  train: ArraySplit
  test: ArraySplit
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where a dataset copy comes from: a cache identity and its decoder."""
  identity: tuple
  decode: Callable[[], _DecodedCopy]


def _cached_copy(dataset_cfg, name: str) -> tuple[_DecodedCopy, np.ndarray]:
  """The decoded copy and its train moments, from the cache or freshly decoded."""
  entry = _cache_entry(dataset_cfg, name, _resolve_source(dataset_cfg, name))
  cached = _read_cache(entry.path)
  if cached is not None:
    return cached
  copy = entry.source.decode()
  moments = _pixel_moments(copy.train.images)
  _write_cache(entry.path, copy, moments)
  return copy, moments


@dataclasses.dataclass(frozen=True)
class _CacheEntry:
  path: Path
  source: _Source


def _cache_entry(dataset_cfg, name: str, source: _Source) -> _CacheEntry:
  """The cache directory of a source: keyed by its identity and the image size.

  The identity holds the absolute path with its size and mtime (every file's,
  for a directory), so a changed copy gets a fresh entry. Subsetting happens
  after loading, so max_train_examples is not part of the key.
  """
  key = json.dumps([_CACHE_VERSION, name, _image_size(dataset_cfg, name),
                    list(source.identity)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  return _CacheEntry(_cache_root(dataset_cfg) / f'{name}-{digest}', source)


def _read_cache(path: Path) -> tuple[_DecodedCopy, np.ndarray] | None:
  """A cache entry's arrays, or None when it is absent or unreadable."""
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
  copy = _DecodedCopy(
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


def _write_cache(path: Path, copy: _DecodedCopy, moments: np.ndarray) -> None:
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


def _cached_class_names(dataset_cfg, name: str) -> tuple[str, ...] | None:
  """Class names recorded by a cache entry for this config, if one exists."""
  entry = _cache_entry(dataset_cfg, name, _resolve_source(dataset_cfg, name))
  try:
    return tuple(json.loads((entry.path / 'meta.json').read_text())['class_names'])
  except (OSError, ValueError, KeyError):
    return None


# ----------------------------------------------------------------------------
# Sources: a local copy, a tfds data_dir, or a verified download.
# ----------------------------------------------------------------------------


def _resolve_source(dataset_cfg, name: str) -> _Source:
  path = _configured_path(dataset_cfg)
  image_size = _image_size(dataset_cfg, name)
  if path is not None:
    if not path.exists():
      raise DatasetError(
          f'dataset.path={path} does not exist; pass'
          f' --config.dataset.path=<local copy>: {_ACCEPTED_FORMATS}')
    if _is_tfds_data_dir(path, name):
      return _tfds_source(path, name, image_size)
    return _Source(identity=('local', str(path), _fingerprint(path)),
                   decode=functools.partial(_decode_local, path, name, image_size))
  if name == 'folder':
    raise DatasetError(
        "dataset.name='folder' needs --config.dataset.path=<directory or"
        ' archive with train/<class>/<image> and test/<class>/<image>>')
  default_data_dir = _default_tfds_data_dir()
  if _is_tfds_data_dir(default_data_dir, name):
    return _tfds_source(default_data_dir, name, image_size)
  return _download_source(dataset_cfg, name, image_size)


def _fingerprint(path: Path) -> list:
  """Size and mtime of a file, or a digest of those of every file under a directory."""
  if path.is_file():
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for file_name in sorted(files):
      file_path = Path(root, file_name)
      stat = file_path.stat()
      digest.update(f'{file_path.relative_to(path)}\0{stat.st_size}'
                    f'\0{stat.st_mtime_ns}\n'.encode())
  return [digest.hexdigest()]


def _is_tfds_data_dir(data_dir: Path, name: str) -> bool:
  """True if tfds prepared `name` under data_dir (a dataset_info.json exists)."""
  return any((data_dir / name).glob('*/dataset_info.json'))


def _tfds_source(data_dir: Path, name: str, image_size: int) -> _Source:
  return _Source(
      identity=('tfds', str(data_dir), _fingerprint(data_dir / name)),
      decode=functools.partial(_read_tfds_copy, data_dir, name, image_size))


def _read_tfds_copy(data_dir: Path, name: str, image_size: int) -> _DecodedCopy:
  """Reads a tfds-prepared copy through `tfds.data_source` (array_record, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  label_names = tfds.builder(name, data_dir=str(data_dir)).info.features['label'].names
  splits = {split: _read_tfds_split(tfds.data_source(
      name, split=split, data_dir=str(data_dir), download=False))
            for split in ('train', 'test')}
  copy = _DecodedCopy(source=f'{data_dir}/{name}', train=splits['train'],
                      test=splits['test'], class_names=tuple(label_names))
  _check_decoded(copy, image_size)
  return copy


def _read_tfds_split(source) -> ArraySplit:
  """All records of a split; tfds decodes each PNG with Pillow (or OpenCV if installed)."""
  records = [source[i] for i in range(len(source))]
  return ArraySplit(np.stack([np.asarray(r['image'], np.uint8) for r in records]),
                    np.asarray([r['label'] for r in records], np.int32))


# Official URLs, exactly as tfds registers them with sizes and sha256 checksums.
_CIFAR_URLS = {
    'cifar10': {'archive': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'},
    'cifar100': {'archive': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'},
}
_SVHN_URLS = {
    'train_32x32.mat': 'http://ufldl.stanford.edu/housenumbers/train_32x32.mat',
    'test_32x32.mat': 'http://ufldl.stanford.edu/housenumbers/test_32x32.mat',
}


def _download_urls(name: str) -> dict[str, str]:
  return _SVHN_URLS if name == 'svhn_cropped' else _CIFAR_URLS[name]


def _download_source(dataset_cfg, name: str, image_size: int) -> _Source:
  """Downloads the official files through tfds, checked against its checksums.

  The identity is the URLs themselves: tfds verifies every byte against the
  registered sha256, so the same URL always means the same content.
  """
  urls = _download_urls(name)
  download_dir = _cache_root(dataset_cfg) / 'downloads'
  return _Source(
      identity=('download', sorted(urls.values())),
      decode=functools.partial(_download_and_decode, name, urls, download_dir,
                               image_size))


def _download_and_decode(name: str, urls: dict[str, str], download_dir: Path,
                         image_size: int) -> _DecodedCopy:
  try:
    for url in urls.values():
      _check_host_resolves(url)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    manager = tfds.download.DownloadManager(
        download_dir=download_dir, url_infos=_registered_url_infos(name),
        force_checksums_validation=True)
    downloaded = manager.download(urls)
  except Exception as err:  # noqa: BLE001 - any failure means "use a local copy".
    raise DatasetError(
        f'could not download {name} ({type(err).__name__}: {err}); pass'
        f' --config.dataset.path=<local copy>: {_ACCEPTED_FORMATS}') from err
  if name == 'svhn_cropped':
    tree = _FileTree(str(download_dir), dict(downloaded.items()))
  else:
    tree = _open_tree(Path(downloaded['archive']))
  return _decode_tree(tree, name, image_size)


def _check_host_resolves(url: str) -> None:
  """Fails in milliseconds without network, instead of tfds's ~3 minutes of retries.

  Skipped behind a proxy, where the local resolver may not know the host.
  """
  parts = urllib.parse.urlparse(url)
  if not urllib.request.getproxies().get(parts.scheme):
    socket.getaddrinfo(parts.hostname, None)


def _registered_url_infos(name: str) -> dict:
  """Sizes and sha256 tfds ships for `name`'s URLs; a KeyError if it has none.

  CIFAR's are in tfds's global url_checksums/; SVHN's live beside its builder,
  whose class we do not load (that needs importlib_resources).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top

  if name == 'svhn_cropped':
    infos = checksums.load_url_infos(
        tfds.core.utils.tfds_path() / 'datasets' / 'svhn_cropped' / 'checksums.tsv')
  else:
    infos = checksums.get_all_url_infos()
  return {url: infos[url] for url in _download_urls(name).values()}


# ----------------------------------------------------------------------------
# File trees: a directory or an archive, as relative POSIX names -> bytes.
# ----------------------------------------------------------------------------

_TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tar.xz')


class _FileTree:
  """The files of one dataset copy, named relative to its top directory.

  Values are paths (read on demand) for directories, bytes for archives, which
  are read in one sequential pass. A single top-level directory that holds
  everything (e.g. cifar-10-batches-py/) is stripped from the names.
  """

  def __init__(self, label: str, files: dict[str, Path | bytes]):
    self.label = label
    self.files = _strip_common_top_dir(files)

  @property
  def names(self) -> set[str]:
    return set(self.files)

  def read(self, name: str) -> bytes:
    content = self.files[name]
    return content if isinstance(content, bytes) else Path(content).read_bytes()


def _is_hidden(name: str) -> bool:
  """macOS and editor debris (._x.jpg, __MACOSX/, .DS_Store) is never data."""
  return any(part.startswith('.') or part == '__MACOSX' for part in name.split('/'))


def _strip_common_top_dir(files: dict) -> dict:
  tops = {name.split('/', 1)[0] for name in files}
  if len(tops) == 1 and all('/' in name for name in files):
    return {name.split('/', 1)[1]: content for name, content in files.items()}
  return files


def _is_tar(path: Path) -> bool:
  return path.name.lower().endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(path)


def _open_tree(path: Path) -> _FileTree:
  if path.is_dir():
    return _FileTree(str(path), {name: path / name for name in _dir_names(path)})
  if path.is_file() and _is_tar(path):
    return _FileTree(str(path), _read_tar(path))
  raise DatasetError(
      f'{path} is not a recognised dataset file; expected {_ACCEPTED_FORMATS}')


def _dir_names(root: Path) -> list[str]:
  names = []
  for parent, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if not _is_hidden(d)]
    relative = Path(parent).relative_to(root)
    names.extend((relative / f).as_posix() for f in files if not _is_hidden(f))
  return names


def _read_tar(path: Path, with_content: bool = True) -> dict[str, bytes | None]:
  """Reads (or only lists) an archive's regular files in one sequential pass."""
  files = {}
  try:
    with tarfile.open(path, 'r:*') as archive:
      for member in archive:
        name = posixpath.normpath(member.name).lstrip('/')
        if member.isfile() and not _is_hidden(name):
          files[name] = archive.extractfile(member).read() if with_content else None
  except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
    raise DatasetError(
        f'corrupt or unreadable archive {path} ({type(err).__name__}: {err});'
        ' re-download it or point dataset.path at an intact copy') from err
  return files


def _list_tree_names(path: Path) -> set[str]:
  """Names a tree would have, without reading file contents."""
  if path.is_dir():
    return set(_strip_common_top_dir(dict.fromkeys(_dir_names(path))))
  if path.is_file() and _is_tar(path):
    return set(_strip_common_top_dir(_read_tar(path, with_content=False)))
  raise DatasetError(
      f'{path} is not a recognised dataset file; expected {_ACCEPTED_FORMATS}')


# ----------------------------------------------------------------------------
# Layouts: which official format a tree holds, and their parsers.
# ----------------------------------------------------------------------------

_CIFAR10_TRAIN = tuple(f'data_batch_{i}' for i in range(1, 6))
_LAYOUT_FILES = {  # layout -> files that identify it
    'cifar10-python': _CIFAR10_TRAIN + ('test_batch', 'batches.meta'),
    'cifar100-python': ('train', 'test', 'meta'),
    'cifar10-binary': tuple(f'{f}.bin' for f in _CIFAR10_TRAIN) + (
        'test_batch.bin', 'batches.meta.txt'),
    'cifar100-binary': ('train.bin', 'test.bin', 'fine_label_names.txt'),
    'svhn-mat': ('train_32x32.mat', 'test_32x32.mat'),
}
_LAYOUT_DATASETS = {  # layout -> dataset names it may hold
    'cifar10-python': ('cifar10',), 'cifar10-binary': ('cifar10',),
    'cifar100-python': ('cifar100',), 'cifar100-binary': ('cifar100',),
    'svhn-mat': ('svhn_cropped',),
    'image-folder': ('cifar10', 'cifar100', 'svhn_cropped', 'folder'),
}
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.tif',
                   '.tiff', '.webp')
_EVAL_SPLIT_DIRS = ('test', 'val', 'validation')


def _detect_layout(names: set[str], label: str) -> str:
  for layout, required in _LAYOUT_FILES.items():
    if names.issuperset(required):
      return layout
  if any(name.split('/', 1)[0] in ('train',) + _EVAL_SPLIT_DIRS and '/' in name
         for name in names):
    return 'image-folder'
  raise DatasetError(
      f'no recognised dataset layout in {label}; expected {_ACCEPTED_FORMATS}')


def _decode_local(path: Path, name: str, image_size: int) -> _DecodedCopy:
  return _decode_tree(_open_tree(path), name, image_size)


def _decode_tree(tree: _FileTree, name: str, image_size: int) -> _DecodedCopy:
  layout = _detect_layout(tree.names, tree.label)
  if name not in _LAYOUT_DATASETS[layout]:
    raise DatasetError(
        f'{tree.label} holds {layout} data, not {name}; set dataset.name to one of'
        f' {_LAYOUT_DATASETS[layout]} or point dataset.path at a {name} copy')
  parsers = {
      'cifar10-python': _parse_cifar10_python,
      'cifar100-python': _parse_cifar100_python,
      'cifar10-binary': _parse_cifar10_binary,
      'cifar100-binary': _parse_cifar100_binary,
      'svhn-mat': _parse_svhn_mat,
      'image-folder': functools.partial(_parse_image_folder, image_size=image_size),
  }
  copy = parsers[layout](tree)
  _check_decoded(copy, image_size)
  return copy


def _check_decoded(copy: _DecodedCopy, image_size: int) -> None:
  """Image size as configured, and every label a valid class index."""
  height, width = copy.train.images.shape[1:3]
  if (height, width) != (image_size, image_size):
    raise DatasetError(
        f'{copy.source} has {height}x{width} images but dataset.image_size='
        f'{image_size}; set --config.dataset.image_size={height}')
  for split, labels in (('train', copy.train.labels), ('test', copy.test.labels)):
    if labels.size and not 0 <= labels.min() <= labels.max() < len(copy.class_names):
      raise DatasetError(
          f'{copy.source} has {split} labels outside 0..{len(copy.class_names) - 1}'
          ' (its class-name list is shorter); re-download or repair the copy')


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays: a dataset file must not run code."""

  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
      ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
    return super().find_class(module, name)


def _unpickle(tree: _FileTree, member: str) -> dict:
  try:
    content = _NumpyOnlyUnpickler(io.BytesIO(tree.read(member)), encoding='bytes').load()
  except Exception as err:  # noqa: BLE001 - pickle raises many types.
    raise DatasetError(
        f'corrupt pickle {member} in {tree.label} ({type(err).__name__}: {err});'
        ' re-download the CIFAR python tarball') from err
  if not isinstance(content, dict):
    raise DatasetError(f'corrupt pickle {member} in {tree.label} (not a dict);'
                       ' re-download the CIFAR python tarball')
  return content


def _cifar_images(rows: np.ndarray) -> np.ndarray:
  """[N, 3072] rows of CHW planes -> uint8 [N, 32, 32, 3]."""
  return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _cifar_python_split(tree: _FileTree, members: Sequence[str],
                        label_key: bytes) -> ArraySplit:
  images, labels = [], []
  for member in members:
    batch = _unpickle(tree, member)
    try:
      rows = np.asarray(batch[b'data'], np.uint8).reshape(-1, 3072)
      batch_labels = np.asarray(batch[label_key], np.int32).reshape(-1)
    except (KeyError, ValueError) as err:
      raise DatasetError(
          f'corrupt pickle {member} in {tree.label} (bad {err}); re-download the'
          ' CIFAR python tarball') from err
    if len(rows) != len(batch_labels):
      raise DatasetError(f'corrupt pickle {member} in {tree.label} (images and'
                         ' labels differ in number); re-download it')
    images.append(_cifar_images(rows))
    labels.append(batch_labels)
  return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _pickled_names(tree: _FileTree, member: str, key: bytes) -> tuple[str, ...]:
  try:
    return tuple(n.decode() for n in _unpickle(tree, member)[key])
  except (KeyError, AttributeError) as err:
    raise DatasetError(f'corrupt pickle {member} in {tree.label} (no {key!r});'
                       ' re-download the CIFAR python tarball') from err


def _parse_cifar10_python(tree: _FileTree) -> _DecodedCopy:
  return _DecodedCopy(
      source=tree.label,
      train=_cifar_python_split(tree, _CIFAR10_TRAIN, b'labels'),
      test=_cifar_python_split(tree, ('test_batch',), b'labels'),
      class_names=_pickled_names(tree, 'batches.meta', b'label_names'))


def _parse_cifar100_python(tree: _FileTree) -> _DecodedCopy:
  return _DecodedCopy(
      source=tree.label,
      train=_cifar_python_split(tree, ('train',), b'fine_labels'),
      test=_cifar_python_split(tree, ('test',), b'fine_labels'),
      class_names=_pickled_names(tree, 'meta', b'fine_label_names'))


def _cifar_binary_split(tree: _FileTree, members: Sequence[str],
                        label_bytes: int) -> ArraySplit:
  """Records of `label_bytes` label bytes (the last is the class) + 3072 image bytes."""
  record = label_bytes + 3072
  images, labels = [], []
  for member in members:
    raw = np.frombuffer(tree.read(member), np.uint8)
    if raw.size == 0 or raw.size % record:
      raise DatasetError(
          f'corrupt CIFAR binary file {member} in {tree.label} ({raw.size} bytes'
          f' is not a multiple of {record}); re-download the tarball')
    rows = raw.reshape(-1, record)
    labels.append(rows[:, label_bytes - 1].astype(np.int32))
    images.append(_cifar_images(rows[:, label_bytes:]))
  return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _text_lines(tree: _FileTree, member: str) -> tuple[str, ...]:
  return tuple(line.strip() for line in tree.read(member).decode().splitlines()
               if line.strip())


def _parse_cifar10_binary(tree: _FileTree) -> _DecodedCopy:
  return _DecodedCopy(
      source=tree.label,
      train=_cifar_binary_split(tree, [f'{f}.bin' for f in _CIFAR10_TRAIN], 1),
      test=_cifar_binary_split(tree, ['test_batch.bin'], 1),
      class_names=_text_lines(tree, 'batches.meta.txt'))


def _parse_cifar100_binary(tree: _FileTree) -> _DecodedCopy:
  """CIFAR-100 binary records carry a coarse then a fine label byte; we keep the fine."""
  return _DecodedCopy(
      source=tree.label,
      train=_cifar_binary_split(tree, ['train.bin'], 2),
      test=_cifar_binary_split(tree, ['test.bin'], 2),
      class_names=_text_lines(tree, 'fine_label_names.txt'))


def _svhn_split(tree: _FileTree, member: str) -> ArraySplit:
  """SVHN .mat: X is [32, 32, 3, N] (HWCN) and y is [N, 1] with 10 meaning digit 0."""
  import scipy.io  # pylint: disable=g-import-not-at-top

  try:
    mat = scipy.io.loadmat(io.BytesIO(tree.read(member)))
    images, labels = mat['X'], mat['y']
    if images.ndim != 4 or images.shape[2] != 3 or labels.size != images.shape[3]:
      raise ValueError(f'X has shape {images.shape} and y has {labels.size} labels')
  except Exception as err:  # noqa: BLE001 - loadmat raises many types.
    raise DatasetError(
        f'corrupt SVHN file {member} in {tree.label} ({type(err).__name__}: {err});'
        ' re-download it from http://ufldl.stanford.edu/housenumbers/') from err
  return ArraySplit(
      np.ascontiguousarray(images.transpose(3, 0, 1, 2), dtype=np.uint8),
      (labels.reshape(-1) % 10).astype(np.int32))


def _parse_svhn_mat(tree: _FileTree) -> _DecodedCopy:
  return _DecodedCopy(
      source=tree.label,
      train=_svhn_split(tree, 'train_32x32.mat'),
      test=_svhn_split(tree, 'test_32x32.mat'),
      class_names=tuple(str(digit) for digit in range(10)))


# ----------------------------------------------------------------------------
# Image folders: split/class/image, decoded with Pillow in worker processes.
# ----------------------------------------------------------------------------


def _image_folder_splits(names: set[str], label: str) -> tuple[dict, dict, tuple]:
  """{class: [image names]} for train and test, and the sorted class names."""
  splits: dict[str, dict[str, list[str]]] = {}
  for name in sorted(names):
    parts = name.split('/')
    if len(parts) == 3 and parts[2].lower().endswith(_IMAGE_SUFFIXES):
      splits.setdefault(parts[0], {}).setdefault(parts[1], []).append(name)
  eval_dir = next((d for d in _EVAL_SPLIT_DIRS if d in splits), None)
  if 'train' not in splits or eval_dir is None:
    raise DatasetError(
        f'image folder {label} needs images in train/<class>/ and in test/<class>/'
        f' (or val/, validation/); found image splits {sorted(splits)}'
        f' (image suffixes {_IMAGE_SUFFIXES})')
  train, test = splits['train'], splits[eval_dir]
  if set(train) != set(test):
    raise DatasetError(
        f'image folder {label} has different classes in train/ and {eval_dir}/:'
        f' only in train {sorted(set(train) - set(test))[:5]}, only in'
        f' {eval_dir} {sorted(set(test) - set(train))[:5]}; give both splits'
        ' the same class directories')
  return train, test, tuple(sorted(train))


def _folder_class_names(dataset_cfg) -> tuple[str, ...]:
  """Class names of an image folder: from the cache if decoded before, else listed."""
  path = _configured_path(dataset_cfg)
  cached = _cached_class_names(dataset_cfg, 'folder')
  if cached is not None:
    return cached
  return _image_folder_splits(_list_tree_names(path), str(path))[2]


def _parse_image_folder(tree: _FileTree, image_size: int) -> _DecodedCopy:
  """Both splits decoded in one batch of work, so worker processes start once."""
  train, test, class_names = _image_folder_splits(tree.names, tree.label)
  train_names, train_labels = _class_ordered(train, class_names)
  test_names, test_labels = _class_ordered(test, class_names)
  images = _decode_images(tree, train_names + test_names, image_size)
  return _DecodedCopy(
      source=tree.label,
      train=ArraySplit(images[:len(train_names)], train_labels),
      test=ArraySplit(images[len(train_names):], test_labels),
      class_names=class_names)


def _class_ordered(by_class: dict[str, list[str]],
                   class_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
  """Image names class by class, with their int32 labels."""
  names = [name for cls in class_names for name in by_class[cls]]
  labels = np.concatenate([np.full(len(by_class[cls]), i, np.int32)
                           for i, cls in enumerate(class_names)])
  return names, labels


_DECODE_CHUNK = 2500
_PARALLEL_DECODE_MIN = 8192  # below this, starting worker processes costs more than it saves


def _decode_images(tree: _FileTree, names: list[str], image_size: int) -> np.ndarray:
  """Decodes images to uint8 [N, S, S, 3], in parallel for large folders.

  Small JPEGs spend most of their time in Python, so threads do not help;
  spawned processes do (CIFAR-10's 60,000 JPEGs: ~3.0 s serial, ~2.1 s with
  two). 'spawn', not fork: the parent may already run JAX's threads.
  """
  jobs = [(tree.label, [(name, tree.read(name)) for name in names[i:i + _DECODE_CHUNK]],
           image_size) for i in range(0, len(names), _DECODE_CHUNK)]
  workers = min(len(os.sched_getaffinity(0)), 8, len(jobs))
  if len(names) < _PARALLEL_DECODE_MIN or workers < 2:
    chunks = [_decode_chunk(job) for job in jobs]
  else:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      chunks = pool.map(_decode_chunk, jobs)
  return np.concatenate(chunks)


def _decode_chunk(job: tuple[str, list[tuple[str, bytes]], int]) -> np.ndarray:
  label, items, image_size = job
  return np.stack([_decode_image(label, name, blob, image_size) for name, blob in items])


def _decode_image(label: str, name: str, blob: bytes, image_size: int) -> np.ndarray:
  """One image as uint8 RGB [S, S, 3]; resized (bilinear) only if its size differs."""
  try:
    with Image.open(io.BytesIO(blob)) as image:
      rgb = image if image.mode == 'RGB' else image.convert('RGB')
      if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
      return np.asarray(rgb, np.uint8)
  except Exception as err:  # noqa: BLE001 - Pillow raises many types.
    raise DatasetError(
        f'cannot decode image {name} in {label} ({type(err).__name__}: {err});'
        ' delete or replace that file') from err


# ----------------------------------------------------------------------------
# Batch plans: which examples make up each step, from (seed, step) alone.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _shared_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  permutation = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
  permutation.setflags(write=False)
  return permutation


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of examples in one epoch: int32 [n], a function of (seed, epoch) only.

  Every process computes the same order, whatever the device or process count.
  """
  return _shared_permutation(seed, epoch, n).copy()


def _steps_per_epoch(n: int, global_batch: int) -> int:
  steps = n // global_batch
  if steps < 1:
    raise DatasetError(
        f'global batch {global_batch} exceeds the {n} training examples; lower'
        ' the batch size or raise dataset.max_train_examples')
  return steps


def _train_slice(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """Read-only view of the step's indices in the (cached) epoch permutation."""
  epoch, offset = divmod(step, _steps_per_epoch(n, global_batch))
  start = offset * global_batch
  return _shared_permutation(seed, epoch, n)[start:start + global_batch]


def train_batch_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """Indices of the examples of training step `step`: int32 [global_batch].

  An epoch is n // global_batch steps; the last n % global_batch examples of
  each epoch's permutation are dropped, so which ones changes with the epoch.
  """
  return _train_slice(seed, step, n, global_batch).copy()


def eval_batches(n: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (indices int32 [global_batch], mask bool [global_batch]) covering 0..n-1 once.

  The last batch is padded with index 0 and masked, never dropped, so metrics
  average over exactly the n examples while every batch keeps one shape.
  """
  for start in range(0, n, global_batch):
    positions = np.arange(start, start + global_batch)
    mask = positions < n
    yield np.where(mask, positions, 0).astype(np.int32), mask


# ----------------------------------------------------------------------------
# ImageNet: tfds array_record -> grain, with per-record transforms in numpy/Pillow.
# ----------------------------------------------------------------------------

_IMAGENET_SPLITS = {'train': 'train', 'validation': 'validation',
                    'test': 'validation', 'eval': 'validation'}
_EVAL_CROP_FRACTION = 224 / 256  # resize to 256, centre-crop 224 (He et al. 2015)
# The stream has no end for training: the train loop decides when to stop.
_UNBOUNDED_STEPS = 2**40
# The customary ImageNet RGB statistics in [0, 1] (as in torchvision and the Flax
# example), used instead of a pass over 1.28M JPEGs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """Inception-style crop box (left, top, right, bottom) (Szegedy et al. 2015).

  Area uniform in area_range of the image, aspect ratio log-uniform in
  aspect_range; after `attempts` misses, the central square.
  """
  area = height * width
  for _ in range(attempts):
    target_area = area * rng.uniform(*area_range)
    aspect = np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1])))
    crop_w = int(round(np.sqrt(target_area * aspect)))
    crop_h = int(round(np.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return left, top, left + crop_w, top + crop_h
  return center_crop_box(height, width, 1.0)


def center_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
  """Central square whose side is `fraction` of the shorter image side."""
  side = max(1, int(round(min(height, width) * fraction)))
  top, left = (height - side) // 2, (width - side) // 2
  return left, top, left + side, top + side


def _resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops `box` and resizes it to size x size in one Pillow call (bilinear, antialiased)."""
  pixels = np.asarray(image, np.uint8)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:  # Grayscale stored with a channel axis.
    pixels = pixels[..., 0]
  rgb = Image.fromarray(pixels).convert('RGB')
  return np.asarray(rgb.resize((size, size), Image.BILINEAR, box=box), np.uint8)


def train_transform(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Random-resized crop to size x size, then a horizontal flip with probability 1/2."""
  out = _resize_box(image, random_resized_crop_box(rng, *image.shape[:2]), size)
  return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """Central crop of 224/256 of the short side, resized to size x size."""
  return _resize_box(image, center_crop_box(*image.shape[:2], _EVAL_CROP_FRACTION), size)


@dataclasses.dataclass(frozen=True)
class _TrainRecord:
  """Maps a position in this process's stream to a transformed example.

  Position p is slot p % per_process of step p // per_process; the global slot
  picks the example from train_batch_indices and seeds its augmentation, so
  the global batch is the same for any process count and any resume step.
  """
  source: object
  example_ids: np.ndarray | None  # subset of the source, or None for all
  seed: int
  global_batch: int
  per_process: int
  process_index: int
  image_size: int

  def __call__(self, position: int) -> dict:
    step, local_slot = divmod(position, self.per_process)
    slot = self.process_index * self.per_process + local_slot
    n = len(self.source) if self.example_ids is None else len(self.example_ids)
    index = int(_train_slice(self.seed, step, n, self.global_batch)[slot])
    if self.example_ids is not None:
      index = int(self.example_ids[index])
    record = self.source[index]
    rng = np.random.default_rng([self.seed, step, slot])
    return {'images': train_transform(record['image'], rng, self.image_size),
            'labels': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class _EvalRecord:
  """Maps a position in this process's eval stream to an example, padded and masked."""
  source: object
  global_batch: int
  per_process: int
  process_index: int
  image_size: int

  def __call__(self, position: int) -> dict:
    batch, local_slot = divmod(position, self.per_process)
    global_position = (batch * self.global_batch
                       + self.process_index * self.per_process + local_slot)
    valid = global_position < len(self.source)
    record = self.source[global_position if valid else 0]
    return {'images': eval_transform(record['image'], self.image_size),
            'labels': np.int32(record['label']), 'mask': np.bool_(valid)}


def imagenet_stream(dataset_cfg, split: str, global_batch: int, *, seed: int,
                    start_step: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
  """This process's share of each global batch, from a tfds-prepared ImageNet.

  Yields {'images': uint8 [global_batch // process_count, S, S, 3],
  'labels': int32 [...]} (plus bool 'mask' for eval, where the last batch is
  padded with example 0). Train batches follow train_batch_indices(seed, step)
  and run forever from `start_step`; eval batches follow eval_batches and
  start at batch `start_step` (normally 0). Records are read and transformed
  by grain worker threads (Pillow releases the GIL while resizing).
  """
  import grain  # pylint: disable=g-import-not-at-top

  name = _dataset_name(dataset_cfg)
  if name not in STREAMED:
    raise DatasetError(f'{name} is held in memory; use load_in_memory, not imagenet_stream')
  if split not in _IMAGENET_SPLITS:
    raise DatasetError(f'unknown split {split!r}; use one of {sorted(_IMAGENET_SPLITS)}')
  if global_batch % process_count:
    raise DatasetError(
        f'global batch {global_batch} does not divide over {process_count}'
        ' processes; use a multiple of the process count')
  per_process = global_batch // process_count
  image_size = _image_size(dataset_cfg, name)
  source = _streamed_source(dataset_cfg, name, _IMAGENET_SPLITS[split])
  if split == 'train':
    example_ids = _train_subset(len(source), int(dataset_cfg.get('max_train_examples', -1)),
                                name)
    num_train = len(source) if example_ids is None else len(example_ids)
    _steps_per_epoch(num_train, global_batch)  # Fails here, not in a worker thread.
    transform = _TrainRecord(source, example_ids, seed, global_batch, per_process,
                             process_index, image_size)
    stop_step = _UNBOUNDED_STEPS
  else:
    transform = _EvalRecord(source, global_batch, per_process, process_index, image_size)
    stop_step = -(-len(source) // global_batch)
  positions = grain.MapDataset.range(start_step * per_process, stop_step * per_process)
  threads = min(16, 2 * len(os.sched_getaffinity(0)))
  records = positions.map(transform).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * per_process))
  return iter(records.batch(per_process, drop_remainder=True))


def imagenet_split_sizes(dataset_cfg) -> dict[str, int]:
  """Examples per epoch: {'train': after any max_train_examples subset, 'validation': all}."""
  name = _dataset_name(dataset_cfg)
  num_train = len(_streamed_source(dataset_cfg, name, 'train'))
  max_train = int(dataset_cfg.get('max_train_examples', -1))
  if _train_subset(num_train, max_train, name) is not None:
    num_train = max_train
  return {'train': num_train,
          'validation': len(_streamed_source(dataset_cfg, name, 'validation'))}


def _streamed_source(dataset_cfg, name: str, split: str):
  """The array_record data source of a tfds-prepared copy (dataset.path or tfds's default).

  Never downloads: preparing ImageNet needs its manual tarballs, and tfds's
  preparation of Image features needs TensorFlow.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = _configured_path(dataset_cfg) or _default_tfds_data_dir()
  fix = (f'prepare it with `tfds build {name} --file_format=array_record` (on a machine'
         f' with TensorFlow) and pass --config.dataset.path=<that tfds data_dir>')
  if not _is_tfds_data_dir(data_dir, name):
    raise DatasetError(f'no tfds-prepared {name} under {data_dir}; {fix}')
  try:
    return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
  except Exception as err:  # noqa: BLE001 - tfds raises many types.
    first_line = str(err).strip().split('\n', 1)[0]
    raise DatasetError(
        f'cannot open the {split} split of {name} under {data_dir}'
        f' ({type(err).__name__}: {first_line}); {fix}') from err
