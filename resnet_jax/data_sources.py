"""Where a small dataset's copy comes from: a local copy, a tfds data_dir, or a download.

Each source is a cache identity and a decoder (dataset_types.Source). tfds is
used only to read array_record copies it prepared and to download the official
files verified against its registered checksums; both need no TensorFlow.
"""

import functools
import hashlib
import os
from pathlib import Path
import socket
import urllib.parse
import urllib.request

import numpy as np

from resnet_jax import data_formats, dataset_config
from resnet_jax.dataset_types import ArraySplit, DecodedCopy, Source
from resnet_jax.errors import DatasetError


def default_tfds_data_dir() -> Path:
  """tfds's default data_dir, read at call time ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  return Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def is_tfds_data_dir(data_dir: Path, name: str) -> bool:
  """True if tfds prepared `name` under data_dir (a dataset_info.json exists)."""
  return any((data_dir / name).glob('*/dataset_info.json'))


def local_source(path: Path, name: str, image_size: int) -> Source:
  """A copy at dataset.path in one of data_formats.ACCEPTED_FORMATS."""
  return Source(identity=('local', str(path), _fingerprint(path)),
                decode=functools.partial(data_formats.decode_local, path, name, image_size))


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


# ----------------------------------------------------------------------------
# A tfds-prepared copy, read through tfds.data_source (array_record).
# ----------------------------------------------------------------------------


def tfds_source(data_dir: Path, name: str, image_size: int) -> Source:
  return Source(
      identity=('tfds', str(data_dir), _fingerprint(data_dir / name)),
      decode=functools.partial(_read_tfds_copy, data_dir, name, image_size))


def _read_tfds_copy(data_dir: Path, name: str, image_size: int) -> DecodedCopy:
  """Reads a tfds-prepared copy through `tfds.data_source` (array_record, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  label_names = tfds.builder(name, data_dir=str(data_dir)).info.features['label'].names
  splits = {split: _read_tfds_split(tfds.data_source(
      name, split=split, data_dir=str(data_dir), download=False))
            for split in ('train', 'test')}
  copy = DecodedCopy(source=f'{data_dir}/{name}', train=splits['train'],
                     test=splits['test'], class_names=tuple(label_names))
  data_formats.check_decoded(copy, image_size)
  return copy


def _read_tfds_split(source) -> ArraySplit:
  """All records of a split; tfds decodes each PNG with Pillow (or OpenCV if installed)."""
  records = [source[i] for i in range(len(source))]
  return ArraySplit(np.stack([np.asarray(r['image'], np.uint8) for r in records]),
                    np.asarray([r['label'] for r in records], np.int32))


# ----------------------------------------------------------------------------
# Verified downloads of the official files, through tfds's DownloadManager.
# ----------------------------------------------------------------------------

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


def download_source(dataset_cfg, name: str, image_size: int) -> Source:
  """Downloads the official files through tfds, checked against its checksums.

  The identity is the URLs themselves: tfds verifies every byte against the
  registered sha256, so the same URL always means the same content.
  """
  urls = _download_urls(name)
  download_dir = dataset_config.cache_root(dataset_cfg) / 'downloads'
  return Source(
      identity=('download', sorted(urls.values())),
      decode=functools.partial(_download_and_decode, name, urls, download_dir,
                               image_size))


def _download_and_decode(name: str, urls: dict[str, str], download_dir: Path,
                         image_size: int) -> DecodedCopy:
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
        f' --config.dataset.path=<local copy>: {data_formats.ACCEPTED_FORMATS}') from err
  if name == 'svhn_cropped':
    tree = data_formats.FileTree(str(download_dir), dict(downloaded.items()))
  else:
    tree = data_formats.open_tree(Path(downloaded['archive']))
  return data_formats.decode_tree(tree, name, image_size)


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
