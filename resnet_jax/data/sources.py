"""Where a small dataset's copy comes from: a local copy, a tfds data_dir, or a download.

Each source is a cache identity and a decoder (`Source`); `resolve` picks one from the
config and the dataset's row. tfds is used only to read array_record copies it prepared
and to download the official files verified against its registered checksums; both need
no TensorFlow.
"""

from collections.abc import Callable
import dataclasses
import functools
import hashlib
import os
from pathlib import Path
import socket
import urllib.parse
import urllib.request

import numpy as np

from resnet_jax.data import cache, formats, registry
from resnet_jax.data.formats import ArraySplit, DecodedCopy
from resnet_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a dataset copy comes from: a cache identity and its decoder."""
  identity: tuple
  decode: Callable[[], DecodedCopy]


def configured_path(dataset_cfg) -> Path | None:
  path = dataset_cfg.get('path', '')
  return Path(path).expanduser().absolute() if path else None


def resolve(dataset_cfg) -> Source:
  """dataset.path (a tfds data_dir or a local copy), else tfds's data_dir, else a download."""
  dataset = registry.lookup(dataset_cfg)
  path = configured_path(dataset_cfg)
  image_size = registry.image_size(dataset_cfg)
  if path is not None:
    if not path.exists():
      raise DatasetError(
          f'dataset.path={path} does not exist; pass'
          f' --config.dataset.path=<local copy>: {formats.ACCEPTED_FORMATS}')
    if is_tfds_data_dir(path, dataset.tfds_name):
      return tfds_source(path, dataset.name, image_size)
    return local_source(path, dataset.name, image_size)
  default_data_dir = default_tfds_data_dir()
  if is_tfds_data_dir(default_data_dir, dataset.tfds_name):
    return tfds_source(default_data_dir, dataset.name, image_size)
  if not dataset.download:
    copy = ('directory or archive with train/<class>/<image> and test/<class>/<image>'
            if dataset.formats == ('image-folder',) else f'a copy in one of {dataset.formats}')
    raise DatasetError(f'dataset.name={dataset.name!r} needs --config.dataset.path=<{copy}>')
  return download_source(dataset_cfg, dataset.name, image_size)


def default_tfds_data_dir() -> Path:
  """tfds's default data_dir, read at call time ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  return Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def is_tfds_data_dir(data_dir: Path, tfds_name: str | None) -> bool:
  """True if tfds prepared `tfds_name` under data_dir (a dataset_info.json exists)."""
  return tfds_name is not None and any((data_dir / tfds_name).glob('*/dataset_info.json'))


def local_source(path: Path, name: str, image_size: int) -> Source:
  """A copy at dataset.path in one of formats.ACCEPTED_FORMATS."""
  return Source(identity=('local', str(path), _fingerprint(path)),
                decode=functools.partial(formats.decode_local, path, name, image_size))


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
  tfds_name = registry.get(name).tfds_name
  return Source(
      identity=('tfds', str(data_dir), _fingerprint(data_dir / tfds_name)),
      decode=functools.partial(_read_tfds_copy, data_dir, name, image_size))


def _read_tfds_copy(data_dir: Path, name: str, image_size: int) -> DecodedCopy:
  """Reads a tfds-prepared copy through `tfds.data_source` (array_record, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  dataset = registry.get(name)
  tfds_name = dataset.tfds_name
  label_names = tfds.builder(tfds_name, data_dir=str(data_dir)).info.features['label'].names
  train, test = (_read_tfds_split(tfds.data_source(
      tfds_name, split=split, data_dir=str(data_dir), download=False))
                 for split in dataset.splits)
  copy = DecodedCopy(source=f'{data_dir}/{tfds_name}', train=train, test=test,
                     class_names=tuple(label_names))
  formats.check_decoded(copy, image_size)
  return copy


def _read_tfds_split(source) -> ArraySplit:
  """All records of a split; tfds decodes each PNG with Pillow (or OpenCV if installed)."""
  records = [source[i] for i in range(len(source))]
  return ArraySplit(np.stack([np.asarray(r['image'], np.uint8) for r in records]),
                    np.asarray([r['label'] for r in records], np.int32))


# ----------------------------------------------------------------------------
# Verified downloads of the official files, through tfds's DownloadManager.
# ----------------------------------------------------------------------------

def download_source(dataset_cfg, name: str, image_size: int) -> Source:
  """Downloads the official files of the dataset's row through tfds, checked against its
  checksums.

  The identity is the URLs themselves: tfds verifies every byte against the
  registered sha256, so the same URL always means the same content.
  """
  urls = dict(registry.get(name).download)
  download_dir = cache.root(dataset_cfg) / 'downloads'
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
        f' --config.dataset.path=<local copy>: {formats.ACCEPTED_FORMATS}') from err
  if 'archive' in downloaded:  # one tarball of the whole copy
    tree = formats.open_tree(Path(downloaded['archive']))
  else:  # the copy's files themselves
    tree = formats.FileTree(str(download_dir), dict(downloaded.items()))
  return formats.decode_tree(tree, name, image_size)


def _check_host_resolves(url: str) -> None:
  """Fails in milliseconds without network, instead of tfds's ~3 minutes of retries.

  Skipped behind a proxy, where the local resolver may not know the host.
  """
  parts = urllib.parse.urlparse(url)
  if not urllib.request.getproxies().get(parts.scheme):
    socket.getaddrinfo(parts.hostname, None)


def _registered_url_infos(name: str) -> dict:
  """Sizes and sha256 tfds ships for the URLs of `name`'s row; a KeyError if it has none.

  CIFAR's are in tfds's global url_checksums/; SVHN's live beside its builder,
  whose class we do not load (that needs importlib_resources).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top

  dataset = registry.get(name)
  urls = list(dataset.download.values())
  infos = checksums.get_all_url_infos()
  beside_builder = tfds.core.utils.tfds_path() / 'datasets' / dataset.tfds_name / 'checksums.tsv'
  if not all(url in infos for url in urls) and beside_builder.exists():
    infos = {**infos, **checksums.load_url_infos(beside_builder)}
  return {url: infos[url] for url in urls}
