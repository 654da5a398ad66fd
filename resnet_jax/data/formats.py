"""Dataset copies on disk: reading archives and folders, and parsing their formats.

Parses the official CIFAR python and binary batches, SVHN's .mat files and
image-folder trees with numpy, pickle, scipy and Pillow, so no TensorFlow is
needed; large image folders are decoded in worker processes. Each format is one entry
of `FORMATS`: the files that identify it and its parser. Which datasets a format may
hold is said by their rows (registry.py).
"""

from collections.abc import Callable, Sequence
import dataclasses
import io
import multiprocessing
import os
from pathlib import Path
import pickle
import posixpath
import tarfile
import zlib

import numpy as np
from PIL import Image

from resnet_jax.data import registry
from resnet_jax.errors import DatasetError

ACCEPTED_FORMATS = (
    'a CIFAR python or binary tarball (or its extracted directory), a directory'
    ' with SVHN train_32x32.mat and test_32x32.mat, an image-folder tree'
    ' train/<class>/<image> + test/<class>/<image> (directory, .tar, .tar.gz'
    ' or .tgz), or a tfds data_dir holding the prepared dataset')


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  images: np.ndarray  # uint8 [N, H, W, 3], NHWC
  labels: np.ndarray  # int32 [N]


@dataclasses.dataclass(frozen=True)
class DecodedCopy:
  """Both splits of one dataset copy, before any subsetting."""
  source: str
  train: ArraySplit
  test: ArraySplit
  class_names: tuple[str, ...]


# ----------------------------------------------------------------------------
# File trees: a directory or an archive, as relative POSIX names -> bytes.
# ----------------------------------------------------------------------------

_TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tar.xz')


class FileTree:
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


def open_tree(path: Path) -> FileTree:
  if path.is_dir():
    return FileTree(str(path), {name: path / name for name in _dir_names(path)})
  if path.is_file() and _is_tar(path):
    return FileTree(str(path), _read_tar(path))
  raise DatasetError(
      f'{path} is not a recognised dataset file; expected {ACCEPTED_FORMATS}')


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
      f'{path} is not a recognised dataset file; expected {ACCEPTED_FORMATS}')


# ----------------------------------------------------------------------------
# Formats: which official format a tree holds, and their parsers.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Format:
  identify: Callable[[set[str]], bool]  # the tree's file names -> whether it is this format
  parse: Callable[['FileTree', int], DecodedCopy]  # (tree, image size) -> both splits


_CIFAR10_TRAIN = tuple(f'data_batch_{i}' for i in range(1, 6))
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.tif',
                   '.tiff', '.webp')
_EVAL_SPLIT_DIRS = ('test', 'val', 'validation')


def _holds(*files: str) -> Callable[[set[str]], bool]:
  return lambda names: names.issuperset(files)


def _detect_format(names: set[str], label: str) -> str:
  """The first format of FORMATS that identifies the tree (the image folder last)."""
  for data_format, entry in FORMATS.items():
    if entry.identify(names):
      return data_format
  raise DatasetError(
      f'no recognised dataset layout in {label}; expected {ACCEPTED_FORMATS}')


def decode_local(path: Path, name: str, image_size: int) -> DecodedCopy:
  return decode_tree(open_tree(path), name, image_size)


def decode_tree(tree: FileTree, name: str, image_size: int) -> DecodedCopy:
  """The copy in `tree`, parsed, if the row of dataset `name` accepts its format."""
  data_format = _detect_format(tree.names, tree.label)
  if data_format not in registry.get(name).formats:
    raise DatasetError(
        f'{tree.label} holds {data_format} data, not {name}; set dataset.name to one of'
        f' {registry.accepting(data_format)} or point dataset.path at a {name} copy')
  copy = FORMATS[data_format].parse(tree, image_size)
  check_decoded(copy, image_size)
  return copy


def check_decoded(copy: DecodedCopy, image_size: int) -> None:
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


def _unpickle(tree: FileTree, member: str) -> dict:
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


def _cifar_python_split(tree: FileTree, members: Sequence[str],
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


def _pickled_names(tree: FileTree, member: str, key: bytes) -> tuple[str, ...]:
  try:
    return tuple(n.decode() for n in _unpickle(tree, member)[key])
  except (KeyError, AttributeError) as err:
    raise DatasetError(f'corrupt pickle {member} in {tree.label} (no {key!r});'
                       ' re-download the CIFAR python tarball') from err


def _parse_cifar10_python(tree: FileTree, image_size: int) -> DecodedCopy:
  del image_size  # 32x32 by the format; check_decoded compares it with the config
  return DecodedCopy(
      source=tree.label,
      train=_cifar_python_split(tree, _CIFAR10_TRAIN, b'labels'),
      test=_cifar_python_split(tree, ('test_batch',), b'labels'),
      class_names=_pickled_names(tree, 'batches.meta', b'label_names'))


def _parse_cifar100_python(tree: FileTree, image_size: int) -> DecodedCopy:
  del image_size  # 32x32 by the format; check_decoded compares it with the config
  return DecodedCopy(
      source=tree.label,
      train=_cifar_python_split(tree, ('train',), b'fine_labels'),
      test=_cifar_python_split(tree, ('test',), b'fine_labels'),
      class_names=_pickled_names(tree, 'meta', b'fine_label_names'))


def _cifar_binary_split(tree: FileTree, members: Sequence[str],
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


def _text_lines(tree: FileTree, member: str) -> tuple[str, ...]:
  return tuple(line.strip() for line in tree.read(member).decode().splitlines()
               if line.strip())


def _parse_cifar10_binary(tree: FileTree, image_size: int) -> DecodedCopy:
  del image_size  # 32x32 by the format; check_decoded compares it with the config
  return DecodedCopy(
      source=tree.label,
      train=_cifar_binary_split(tree, [f'{f}.bin' for f in _CIFAR10_TRAIN], 1),
      test=_cifar_binary_split(tree, ['test_batch.bin'], 1),
      class_names=_text_lines(tree, 'batches.meta.txt'))


def _parse_cifar100_binary(tree: FileTree, image_size: int) -> DecodedCopy:
  """CIFAR-100 binary records carry a coarse then a fine label byte; we keep the fine."""
  del image_size  # 32x32 by the format; check_decoded compares it with the config
  return DecodedCopy(
      source=tree.label,
      train=_cifar_binary_split(tree, ['train.bin'], 2),
      test=_cifar_binary_split(tree, ['test.bin'], 2),
      class_names=_text_lines(tree, 'fine_label_names.txt'))


def _svhn_split(tree: FileTree, member: str) -> ArraySplit:
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


def _parse_svhn_mat(tree: FileTree, image_size: int) -> DecodedCopy:
  del image_size  # 32x32 by the format; check_decoded compares it with the config
  return DecodedCopy(
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


def folder_class_names(path: Path) -> tuple[str, ...]:
  """Class names of an image folder at `path`, listed without reading any image."""
  return _image_folder_splits(_list_tree_names(path), str(path))[2]


def _parse_image_folder(tree: FileTree, image_size: int) -> DecodedCopy:
  """Both splits decoded in one batch of work, so worker processes start once."""
  train, test, class_names = _image_folder_splits(tree.names, tree.label)
  train_names, train_labels = _class_ordered(train, class_names)
  test_names, test_labels = _class_ordered(test, class_names)
  images = _decode_images(tree, train_names + test_names, image_size)
  return DecodedCopy(
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


def _decode_images(tree: FileTree, names: list[str], image_size: int) -> np.ndarray:
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
# The formats, in the order they are tried; a new one is an entry and its parser.
# ----------------------------------------------------------------------------

FORMATS: dict[str, Format] = {
    'cifar10-python': Format(_holds(*_CIFAR10_TRAIN, 'test_batch', 'batches.meta'),
                             _parse_cifar10_python),
    'cifar100-python': Format(_holds('train', 'test', 'meta'), _parse_cifar100_python),
    'cifar10-binary': Format(
        _holds(*(f'{f}.bin' for f in _CIFAR10_TRAIN), 'test_batch.bin', 'batches.meta.txt'),
        _parse_cifar10_binary),
    'cifar100-binary': Format(_holds('train.bin', 'test.bin', 'fine_label_names.txt'),
                              _parse_cifar100_binary),
    'svhn-mat': Format(_holds('train_32x32.mat', 'test_32x32.mat'), _parse_svhn_mat),
    # Any file below train/ or an evaluation split's folder: tried last.
    'image-folder': Format(lambda names: any(
        name.split('/', 1)[0] in ('train',) + _EVAL_SPLIT_DIRS and '/' in name
        for name in names), _parse_image_folder),
}
