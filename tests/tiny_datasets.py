"""Tiny copies of the official dataset formats, and helpers the dataset tests share.

Each test builds its copy in tmp_path, so the suite needs no network and no
real data. A test module that loads data imports `isolated_tfds_data_dir`, so
that autouse fixture keeps it away from the user's ~/tensorflow_datasets and
~/.cache.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import formats

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                   'horse', 'ship', 'truck')


@pytest.fixture(autouse=True)
def isolated_tfds_data_dir(tmp_path, monkeypatch):
  """Never read the user's ~/tensorflow_datasets or ~/.cache."""
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_tfds_here'))
  monkeypatch.setenv('RESNET_JAX_CACHE', str(tmp_path / 'env_cache'))


def config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  values = dict(name='cifar10', path='', max_train_examples=-1, image_size=32,
                num_classes=-1, cache_dir=str(tmp_path / 'cache'))
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def random_images(count: int, seed: int, size: int = 32) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)


def chw_rows(images: np.ndarray) -> np.ndarray:
  """The official CIFAR row layout: 1024 red, then green, then blue bytes."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
  with tarfile.open(path, 'w:gz') as archive:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      archive.addfile(info, io.BytesIO(content))
  return path


def extract(archive: Path, into: Path) -> Path:
  with tarfile.open(archive) as tar:
    tar.extractall(into, filter='data')
  return into


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
  message = str(error.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message, f'{fragment!r} not in {message!r}'


# ----------------------------------------------------------------------------
# Tiny copies of the official formats.
# ----------------------------------------------------------------------------


def cifar10_python_files(train, test) -> dict[str, bytes]:
  """cifar-10-python.tar.gz layout; train split over data_batch_1..5."""
  def batch(images, labels):
    return pickle.dumps({b'batch_label': b'batch', b'labels': [int(x) for x in labels],
                         b'data': chw_rows(images)}, protocol=2)
  parts = np.array_split(np.arange(len(train[1])), 5)
  files = {f'cifar-10-batches-py/data_batch_{i + 1}': batch(train[0][p], train[1][p])
           for i, p in enumerate(parts)}
  files['cifar-10-batches-py/test_batch'] = batch(*test)
  files['cifar-10-batches-py/batches.meta'] = pickle.dumps(
      {b'label_names': [n.encode() for n in CIFAR10_CLASSES], b'num_vis': 3072}, protocol=2)
  return files


def cifar100_python_files(train, test) -> dict[str, bytes]:
  def split(images, labels):
    return pickle.dumps({b'data': chw_rows(images), b'fine_labels': labels.tolist(),
                         b'coarse_labels': (labels // 5).tolist()}, protocol=2)
  return {'cifar-100-python/train': split(*train), 'cifar-100-python/test': split(*test),
          'cifar-100-python/meta': pickle.dumps(
              {b'fine_label_names': [f'fine{i:02d}'.encode() for i in range(100)],
               b'coarse_label_names': [f'coarse{i}'.encode() for i in range(20)]})}


def cifar10_binary_files(train, test) -> dict[str, bytes]:
  def records(images, labels):
    return np.concatenate([labels[:, None].astype(np.uint8), chw_rows(images)], 1).tobytes()
  parts = np.array_split(np.arange(len(train[1])), 5)
  files = {f'cifar-10-batches-bin/data_batch_{i + 1}.bin': records(train[0][p], train[1][p])
           for i, p in enumerate(parts)}
  files['cifar-10-batches-bin/test_batch.bin'] = records(*test)
  files['cifar-10-batches-bin/batches.meta.txt'] = ('\n'.join(CIFAR10_CLASSES) + '\n\n').encode()
  return files


def cifar100_binary_files(train, test) -> dict[str, bytes]:
  def records(images, labels):
    labels = labels.astype(np.uint8)
    return np.concatenate([(labels // 5)[:, None], labels[:, None], chw_rows(images)],
                          1).tobytes()
  return {'cifar-100-binary/train.bin': records(*train),
          'cifar-100-binary/test.bin': records(*test),
          'cifar-100-binary/fine_label_names.txt':
              '\n'.join(f'fine{i:02d}' for i in range(100)).encode()}


def tiny_splits(num_classes: int, seed: int = 0):
  """(images, labels) for a 12-example train and 4-example test split."""
  rng = np.random.default_rng(seed)
  train = (random_images(12, seed), rng.integers(0, num_classes, 12).astype(np.int32))
  test = (random_images(4, seed + 1), rng.integers(0, num_classes, 4).astype(np.int32))
  return train, test


def png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def image_folder_files(test_dir: str = 'test') -> dict[str, bytes]:
  """Two classes, given out of order; a 40x20 image and a grayscale one among them."""
  rng = np.random.default_rng(3)
  return {
      'train/zebra/0.png': png(rng.integers(0, 256, (32, 32, 3), np.uint8)),
      'train/zebra/1.png': png(rng.integers(0, 256, (20, 40, 3), np.uint8)),
      'train/apple/0.png': png(rng.integers(0, 256, (32, 32), np.uint8)),
      f'{test_dir}/apple/0.png': png(rng.integers(0, 256, (32, 32, 3), np.uint8)),
      f'{test_dir}/zebra/0.png': png(rng.integers(0, 256, (32, 32, 3), np.uint8)),
      'README.md': b'not an image',
  }


def write_files(root: Path, files: dict[str, bytes]) -> Path:
  for name, content in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(content)
  return root


def fake_tfds_data_dir(root: Path, name: str, version: str) -> Path:
  """The marker of a prepared dataset; tfds.testing.mock_data supplies the records."""
  (root / name / version).mkdir(parents=True)
  (root / name / version / 'dataset_info.json').write_text('{}')
  return root


# ----------------------------------------------------------------------------
# Fixtures and patches.
# ----------------------------------------------------------------------------


@pytest.fixture
def cifar10_tarball(tmp_path):
  train, test = tiny_splits(10)
  return write_tar(tmp_path / 'cifar-10-python.tar.gz', cifar10_python_files(train, test))


def forbid_decoding(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('decoded again although the cache holds this copy')
  monkeypatch.setattr(formats, 'decode_tree', fail)


def write_image_folder(root: Path, per_class: int = 8, test_per_class: int = 4,
                       classes: int = 10) -> Path:
  """A tiny CIFAR-shaped image-folder dataset; the data is the same for every seed."""
  rng = np.random.default_rng(0)
  for split, count in (('train', per_class), ('test', test_per_class)):
    for c in range(classes):
      folder = root / split / f'class{c}'
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[..., c % 3] = 40 * (c + 1) % 256  # a learnable colour cue per class
        Image.fromarray(pixels).save(folder / f'{i}.png')
  return root
