"""resnet_jax.datasets: every accepted format, the cache, the errors, the batch plans.

Each test builds a tiny copy of the official format in tmp_path, so the suite
needs no network and no real data; the one test on the full CIFAR-10 JPEG
tarball skips when ../shared/data is absent.
"""

from __future__ import annotations

import io
import logging
import pickle
import socket
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import scipy.io
from PIL import Image

from resnet_jax import datasets
from resnet_jax.datasets import DatasetError

SHARED_CIFAR10_JPG = Path(__file__).resolve().parents[2] / 'shared/data/cifar10-jpg.tar.gz'
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


# ----------------------------------------------------------------------------
# Formats.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('packaging', ['tarball', 'extracted'])
def test_cifar10_python_batches_load_as_nhwc_with_labels_and_class_names(tmp_path, packaging):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'cifar-10-python.tar.gz', cifar10_python_files(train, test))
  if packaging == 'extracted':
    path = extract(path, tmp_path / 'extracted')

  dataset = datasets.load_in_memory(config(tmp_path, path=str(path)))

  np.testing.assert_array_equal(dataset.train.images, train[0])
  np.testing.assert_array_equal(dataset.train.labels, train[1])
  np.testing.assert_array_equal(dataset.test.images, test[0])
  np.testing.assert_array_equal(dataset.test.labels, test[1])
  assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
  assert dataset.class_names == CIFAR10_CLASSES and dataset.num_classes == 10


def test_cifar100_python_uses_fine_labels_and_names(tmp_path):
  train, test = tiny_splits(100)
  path = write_tar(tmp_path / 'cifar-100-python.tar.gz', cifar100_python_files(train, test))

  dataset = datasets.load_in_memory(config(tmp_path, name='cifar100', path=str(path)))

  np.testing.assert_array_equal(dataset.train.labels, train[1])
  np.testing.assert_array_equal(dataset.test.images, test[0])
  assert dataset.num_classes == 100 and dataset.class_names[7] == 'fine07'


@pytest.mark.parametrize('name, make_files, num_classes', [
    ('cifar10', cifar10_binary_files, 10),
    ('cifar100', cifar100_binary_files, 100),
])
@pytest.mark.parametrize('packaging', ['tarball', 'extracted'])
def test_cifar_binary_records_load(tmp_path, name, make_files, num_classes, packaging):
  train, test = tiny_splits(num_classes)
  path = write_tar(tmp_path / f'{name}-binary.tar.gz', make_files(train, test))
  if packaging == 'extracted':
    path = extract(path, tmp_path / 'extracted')

  dataset = datasets.load_in_memory(config(tmp_path, name=name, path=str(path)))

  np.testing.assert_array_equal(dataset.train.images, train[0])
  np.testing.assert_array_equal(dataset.train.labels, train[1])  # CIFAR-100: the fine label
  np.testing.assert_array_equal(dataset.test.labels, test[1])
  assert len(dataset.class_names) == num_classes


def test_svhn_mat_files_transpose_hwcn_and_map_label_10_to_digit_0(tmp_path):
  (train_images, _), (test_images, _) = tiny_splits(10)
  train_digits = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
  for split, images, digits in [('train', train_images, train_digits),
                                ('test', test_images, np.array([10, 2, 3, 4]))]:
    scipy.io.savemat(tmp_path / f'{split}_32x32.mat',
                     {'X': images.transpose(1, 2, 3, 0), 'y': digits[:, None].astype(np.uint8)})

  dataset = datasets.load_in_memory(config(tmp_path, name='svhn_cropped', path=str(tmp_path)))

  np.testing.assert_array_equal(dataset.train.images, train_images)
  assert dataset.train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
  assert dataset.test.labels.tolist() == [0, 2, 3, 4]
  assert dataset.class_names == tuple('0123456789')


def test_image_folder_sorts_classes_resizes_and_converts_grayscale(tmp_path):
  root = write_files(tmp_path / 'folder', image_folder_files())

  dataset = datasets.load_in_memory(config(tmp_path, name='folder', path=str(root)))

  assert dataset.class_names == ('apple', 'zebra')
  assert dataset.train.images.shape == (3, 32, 32, 3)
  assert dataset.train.labels.tolist() == [0, 1, 1]
  assert dataset.test.labels.tolist() == [0, 1]
  gray = dataset.train.images[0]
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
  # An image already at image_size is not resampled: pixels are exact.
  original = np.asarray(Image.open(root / 'train/zebra/0.png'))
  np.testing.assert_array_equal(dataset.train.images[1], original)


def test_image_folder_tarball_with_top_level_dir_and_val_split(tmp_path):
  files = {f'my_data/{name}': content
           for name, content in image_folder_files(test_dir='val').items()}
  path = write_tar(tmp_path / 'my_data.tgz', files)

  dataset = datasets.load_in_memory(config(tmp_path, name='folder', path=str(path),
                                           image_size=16))

  assert dataset.train.images.shape == (3, 16, 16, 3)
  assert dataset.test.images.shape == (2, 16, 16, 3)
  assert dataset.class_names == ('apple', 'zebra')


def test_parallel_decoding_matches_serial_and_names_corrupt_files(tmp_path, monkeypatch):
  files = image_folder_files()
  serial = datasets.load_in_memory(config(tmp_path, name='folder', path=str(
      write_files(tmp_path / 'serial', files)), cache_dir=str(tmp_path / 'c1')))
  monkeypatch.setattr(datasets, '_PARALLEL_DECODE_MIN', 0)  # Worker processes for any size.
  monkeypatch.setattr(datasets, '_DECODE_CHUNK', 2)

  parallel = datasets.load_in_memory(config(tmp_path, name='folder', path=str(
      write_files(tmp_path / 'parallel', files)), cache_dir=str(tmp_path / 'c2')))
  files['test/zebra/1.jpg'] = b'truncated'
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='folder', path=str(
        write_files(tmp_path / 'broken', files)), cache_dir=str(tmp_path / 'c3')))

  np.testing.assert_array_equal(parallel.train.images, serial.train.images)
  np.testing.assert_array_equal(parallel.test.images, serial.test.images)
  assert_one_line(error, 'test/zebra/1.jpg', 'delete or replace')


def test_mean_and_std_are_float64_statistics_of_the_train_split(tmp_path):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'c.tar.gz', cifar10_python_files(train, test))

  dataset = datasets.load_in_memory(config(tmp_path, path=str(path)))

  pixels = train[0].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(dataset.mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(dataset.std, pixels.std(0), rtol=1e-9)


def test_max_train_examples_is_a_fixed_sorted_subset_with_its_own_statistics(tmp_path):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'c.tar.gz', cifar10_python_files(train, test))
  cfg = config(tmp_path, path=str(path), max_train_examples=5)

  first = datasets.load_in_memory(cfg, seed=0)
  second = datasets.load_in_memory(cfg, seed=123)

  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert len(first.train.labels) == 5 and len(first.test.labels) == 4
  rows = [int(np.flatnonzero((train[0] == image).all(axis=(1, 2, 3)))[0])
          for image in first.train.images]
  assert rows == sorted(rows) and len(set(rows)) == 5
  pixels = train[0][rows].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(first.mean, pixels.mean(0), rtol=1e-12)


def test_synthetic_data_is_deterministic_per_seed_and_sized_by_config(tmp_path):
  cfg = config(tmp_path, name='synthetic', num_classes=7, image_size=8)

  dataset = datasets.load_in_memory(cfg, seed=1)
  again = datasets.load_in_memory(cfg, seed=1)
  other = datasets.load_in_memory(cfg, seed=2)
  sized = datasets.load_in_memory(config(tmp_path, name='synthetic', num_classes=7,
                                         max_train_examples=40), seed=1)

  assert dataset.train.images.shape == (1024, 8, 8, 3) and dataset.test.images.shape[0] == 256
  np.testing.assert_array_equal(dataset.train.images, again.train.images)
  assert not np.array_equal(dataset.train.images, other.train.images)
  assert dataset.num_classes == 7 and set(dataset.train.labels.tolist()) == set(range(7))
  np.testing.assert_allclose(dataset.mean, 0.5, atol=0.01)
  np.testing.assert_allclose(dataset.std, 0.29, atol=0.01)
  assert sized.train.images.shape == (40, 32, 32, 3)


# ----------------------------------------------------------------------------
# Cache.
# ----------------------------------------------------------------------------


@pytest.fixture
def cifar10_tarball(tmp_path):
  train, test = tiny_splits(10)
  return write_tar(tmp_path / 'cifar-10-python.tar.gz', cifar10_python_files(train, test))


def forbid_decoding(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('decoded again although the cache holds this copy')
  monkeypatch.setattr(datasets, '_decode_tree', fail)


def test_second_load_reads_the_cache_instead_of_decoding(tmp_path, cifar10_tarball, monkeypatch):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  first = datasets.load_in_memory(cfg)
  forbid_decoding(monkeypatch)

  second = datasets.load_in_memory(cfg)

  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert (first.class_names, first.mean, first.std) == (second.class_names, second.mean,
                                                        second.std)
  entries = list((tmp_path / 'cache').iterdir())
  assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {
      'train_images.npy', 'train_labels.npy', 'train_moments.npy', 'test_images.npy',
      'test_labels.npy', 'meta.json'}


def test_cache_dir_defaults_to_resnet_jax_cache_env(tmp_path, cifar10_tarball):
  datasets.load_in_memory(config(tmp_path, path=str(cifar10_tarball), cache_dir=''))

  assert len(list((tmp_path / 'env_cache').iterdir())) == 1


def test_a_changed_source_file_is_decoded_again(tmp_path, cifar10_tarball):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  datasets.load_in_memory(cfg)
  train, test = tiny_splits(10, seed=5)
  write_tar(cifar10_tarball, cifar10_python_files(train, test))

  dataset = datasets.load_in_memory(cfg)

  np.testing.assert_array_equal(dataset.train.images, train[0])


@pytest.mark.parametrize('damage', ['truncate_images', 'garble_meta', 'delete_labels'])
def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, cifar10_tarball,
                                                            caplog, damage):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  expected = datasets.load_in_memory(cfg)
  (entry,) = (tmp_path / 'cache').iterdir()
  if damage == 'truncate_images':
    images = entry / 'train_images.npy'
    images.write_bytes(images.read_bytes()[:200])
  elif damage == 'garble_meta':
    (entry / 'meta.json').write_text('{not json')
  else:
    (entry / 'train_labels.npy').unlink()

  with caplog.at_level(logging.WARNING, logger='resnet_jax.datasets'):
    rebuilt = datasets.load_in_memory(cfg)

  assert 'Ignoring unreadable dataset cache' in caplog.text
  np.testing.assert_array_equal(rebuilt.train.images, expected.train.images)
  assert datasets._read_cache(entry) is not None  # the rebuilt entry is whole again


def test_unwritable_cache_dir_only_warns(tmp_path, cifar10_tarball, caplog):
  blocker = tmp_path / 'blocker'
  blocker.write_text('a file where the cache directory should go')

  with caplog.at_level(logging.WARNING, logger='resnet_jax.datasets'):
    dataset = datasets.load_in_memory(config(tmp_path, path=str(cifar10_tarball),
                                             cache_dir=str(blocker / 'cache')))

  assert len(dataset.train.labels) == 12 and 'Cannot write dataset cache' in caplog.text


# ----------------------------------------------------------------------------
# Errors: one line, naming the problem and the fix.
# ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(tmp_path / 'nowhere')))
  assert_one_line(error, 'nowhere', 'does not exist', '--config.dataset.path=')


def test_file_that_is_no_dataset_format(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('hello')
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(path)))
  assert_one_line(error, 'notes.txt', 'not a recognised dataset file', 'CIFAR python')


def test_directory_without_a_known_layout(tmp_path):
  write_files(tmp_path / 'stuff', {'a.txt': b'x', 'b/c.txt': b'y'})
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(tmp_path / 'stuff')))
  assert_one_line(error, 'no recognised dataset layout', 'image-folder')


def test_corrupt_tarball_names_the_file(tmp_path, cifar10_tarball):
  cifar10_tarball.write_bytes(cifar10_tarball.read_bytes()[:3000])
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(cifar10_tarball)))
  assert_one_line(error, 'corrupt', 'cifar-10-python.tar.gz', 're-download')


def test_corrupt_pickle_names_the_member(tmp_path):
  train, test = tiny_splits(10)
  files = cifar10_python_files(train, test)
  files['cifar-10-batches-py/data_batch_3'] = b'\x80\x02garbage'
  path = write_tar(tmp_path / 'c.tar.gz', files)
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(path)))
  assert_one_line(error, 'corrupt pickle data_batch_3', 're-download')


def test_pickle_that_would_run_code_is_refused(tmp_path):
  class RunsCode:
    def __reduce__(self):
      return (print, ('this must never run',))

  train, test = tiny_splits(10)
  files = cifar10_python_files(train, test)
  files['cifar-10-batches-py/test_batch'] = pickle.dumps({b'data': RunsCode()})
  path = write_tar(tmp_path / 'c.tar.gz', files)
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(path)))
  assert_one_line(error, 'test_batch', 'refusing to load builtins.print')


def test_corrupt_jpeg_names_the_file(tmp_path):
  files = image_folder_files()
  files['train/apple/broken.jpg'] = b'\xff\xd8\xff\xe0 definitely not a jpeg'
  root = write_files(tmp_path / 'folder', files)
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'train/apple/broken.jpg', 'delete or replace')


def test_image_folder_without_images(tmp_path):
  root = write_files(tmp_path / 'folder', {'train/cat/notes.txt': b'x', 'test/cat/a.txt': b'y'})
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'needs images in train/<class>/')


def test_image_folder_with_different_classes_in_train_and_test(tmp_path):
  files = image_folder_files()
  files['test/mango/0.png'] = files.pop('test/zebra/0.png')
  root = write_files(tmp_path / 'folder', files)
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'different classes', "['zebra']", "['mango']", 'same class directories')


def test_unknown_dataset_name_lists_the_allowed_ones(tmp_path):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='mnist'))
  assert_one_line(error, "'mnist'", 'cifar10', 'svhn_cropped', 'folder', 'imagenet2012')


@pytest.mark.parametrize('max_train_examples', [0, 13, -5])
def test_max_train_examples_outside_the_train_split(tmp_path, cifar10_tarball,
                                                    max_train_examples):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(cifar10_tarball),
                                   max_train_examples=max_train_examples))
  assert_one_line(error, f'max_train_examples={max_train_examples}', '1..12', 'use -1')


def test_labels_beyond_the_class_name_list(tmp_path):
  train, test = tiny_splits(10)
  files = cifar10_binary_files(train, test)
  files['cifar-10-batches-bin/batches.meta.txt'] = b'airplane\nautomobile\n'
  path = write_tar(tmp_path / 'c.tar.gz', files)
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(path)))
  assert_one_line(error, 'labels outside 0..1', 're-download')


def test_copy_of_another_dataset(tmp_path, cifar10_tarball):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='cifar100', path=str(cifar10_tarball)))
  assert_one_line(error, 'cifar10-python', 'not cifar100')


def test_image_size_that_a_fixed_size_format_cannot_give(tmp_path, cifar10_tarball):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, path=str(cifar10_tarball), image_size=64))
  assert_one_line(error, '32x32', '--config.dataset.image_size=32')


def test_folder_class_count_that_contradicts_a_named_dataset(tmp_path):
  root = write_files(tmp_path / 'folder', image_folder_files())
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='cifar10', path=str(root)))
  assert_one_line(error, 'holds 2 classes', 'cifar10 needs 10')


def test_folder_without_a_path(tmp_path):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='folder'))
  assert_one_line(error, "'folder' needs --config.dataset.path=")


def test_synthetic_without_num_classes(tmp_path):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='synthetic'))
  assert_one_line(error, 'num_classes >= 2', '--config.dataset.num_classes=')


def test_imagenet_is_not_loaded_into_memory(tmp_path):
  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='imagenet2012'))
  assert_one_line(error, 'imagenet_stream')


# ----------------------------------------------------------------------------
# num_classes without loading.
# ----------------------------------------------------------------------------


def test_num_classes_of_named_datasets_needs_no_data(tmp_path):
  assert [datasets.num_classes(config(tmp_path, name=name))
          for name in ('cifar10', 'cifar100', 'svhn_cropped', 'imagenet2012')] == [10, 100, 10, 1000]
  assert datasets.num_classes(config(tmp_path, name='synthetic', num_classes=3)) == 3
  with pytest.raises(DatasetError) as error:
    datasets.num_classes(config(tmp_path, name='cifar100', num_classes=10))
  assert_one_line(error, 'contradicts cifar100', 'dataset.num_classes=-1')


@pytest.mark.parametrize('packaging', ['directory', 'tarball'])
def test_num_classes_of_a_folder_counts_its_class_directories(tmp_path, packaging, monkeypatch):
  files = image_folder_files()
  if packaging == 'tarball':
    path = write_tar(tmp_path / 'f.tar.gz', files)
  else:
    path = write_files(tmp_path / 'folder', files)
  forbid_decoding(monkeypatch)

  assert datasets.num_classes(config(tmp_path, name='folder', path=str(path))) == 2
  assert datasets.num_classes(config(tmp_path, name='folder', path=str(path),
                                     num_classes=5)) == 5


def test_num_classes_of_a_decoded_folder_comes_from_the_cache(tmp_path, monkeypatch):
  path = write_tar(tmp_path / 'f.tar.gz', image_folder_files())
  cfg = config(tmp_path, name='folder', path=str(path))
  datasets.load_in_memory(cfg)
  monkeypatch.setattr(datasets, '_list_tree_names', None)  # Listing would now fail.

  assert datasets.num_classes(cfg) == 2


# ----------------------------------------------------------------------------
# Online default: verified download through tfds, or a tfds-prepared copy.
# ----------------------------------------------------------------------------


def test_failed_download_says_which_dataset_and_to_pass_a_local_copy(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise socket.gaierror(-2, 'Name or service not known')
  monkeypatch.setattr(socket, 'getaddrinfo', no_network)

  with pytest.raises(DatasetError) as error:
    datasets.load_in_memory(config(tmp_path, name='cifar100'))
  assert_one_line(error, 'could not download cifar100', '--config.dataset.path=<local copy>',
                  'CIFAR python or binary tarball')


def test_download_uses_tfds_registered_checksums_and_our_parser(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  train, test = tiny_splits(10)
  archive = write_tar(tmp_path / 'downloaded.tar.gz', cifar10_binary_files(train, test))
  requests = []

  def fake_download(manager, urls):
    requests.append((manager, urls))
    return {key: archive for key in urls}
  monkeypatch.setattr(datasets, '_check_host_resolves', lambda url: None)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download', fake_download)

  dataset = datasets.load_in_memory(config(tmp_path, name='cifar10'))

  np.testing.assert_array_equal(dataset.train.images, train[0])
  ((manager, urls),) = requests
  (url,) = urls.values()
  assert manager._force_checksums_validation
  assert manager._url_infos[url].checksum  # tfds knows this URL's sha256
  assert Path(manager._download_dir) == tmp_path / 'cache' / 'downloads'


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'svhn_cropped'])
def test_every_download_url_has_a_tfds_registered_checksum(name):
  infos = datasets._registered_url_infos(name)
  assert set(infos) == set(datasets._download_urls(name).values())
  assert all(len(info.checksum) == 64 and info.size > 0 for info in infos.values())


def fake_tfds_data_dir(root: Path, name: str, version: str) -> Path:
  """The marker of a prepared dataset; tfds.testing.mock_data supplies the records."""
  (root / name / version).mkdir(parents=True)
  (root / name / version / 'dataset_info.json').write_text('{}')
  return root


@pytest.mark.parametrize('where', ['dataset.path', 'default data_dir'])
def test_tfds_prepared_copy_is_read_through_data_source(tmp_path, monkeypatch, where):
  import tensorflow_datasets as tfds
  data_dir = fake_tfds_data_dir(tmp_path / 'tfds', 'cifar10', '3.0.2')
  if where == 'dataset.path':
    cfg = config(tmp_path, path=str(data_dir))
  else:
    monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
    cfg = config(tmp_path)

  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = datasets.load_in_memory(cfg)
    record = tfds.data_source('cifar10', split='train')[4]

  assert dataset.train.images.shape == (6, 32, 32, 3) and dataset.test.images.shape[0] == 6
  np.testing.assert_array_equal(dataset.train.images[4], record['image'])
  assert dataset.train.labels[4] == record['label'] and dataset.num_classes == 10


# ----------------------------------------------------------------------------
# Batch plans.
# ----------------------------------------------------------------------------


def test_epoch_permutation_depends_only_on_seed_and_epoch():
  first = datasets.epoch_permutation(seed=3, epoch=2, n=50)

  np.testing.assert_array_equal(first, datasets.epoch_permutation(3, 2, 50))
  assert sorted(first.tolist()) == list(range(50)) and first.dtype == np.int32
  assert not np.array_equal(first, datasets.epoch_permutation(3, 3, 50))
  assert not np.array_equal(first, datasets.epoch_permutation(4, 2, 50))
  first[0] = -1  # Callers get their own copy.
  assert datasets.epoch_permutation(3, 2, 50)[0] != -1


def test_train_batches_cover_each_example_once_per_epoch_and_drop_the_remainder():
  n, batch = 103, 10  # 10 steps per epoch; 3 examples left out, different ones each epoch.
  epochs = [np.concatenate([datasets.train_batch_indices(7, step, n, batch)
                            for step in range(epoch * 10, epoch * 10 + 10)])
            for epoch in range(2)]

  for seen in epochs:
    assert seen.dtype == np.int32 and len(set(seen.tolist())) == 100
  assert set(range(n)) - set(epochs[0].tolist()) != set(range(n)) - set(epochs[1].tolist())
  np.testing.assert_array_equal(datasets.train_batch_indices(7, 13, n, batch),
                                datasets.epoch_permutation(7, 1, n)[30:40])


def test_batch_larger_than_the_train_split():
  with pytest.raises(DatasetError) as error:
    datasets.train_batch_indices(0, 0, n=5, global_batch=8)
  assert_one_line(error, 'global batch 8 exceeds the 5 training examples')


def test_eval_batches_cover_every_example_and_mask_the_padding():
  batches = list(datasets.eval_batches(n=23, global_batch=8))

  assert len(batches) == 3
  indices = np.concatenate([i for i, _ in batches])
  mask = np.concatenate([m for _, m in batches])
  assert indices.dtype == np.int32 and mask.dtype == bool
  assert indices[mask].tolist() == list(range(23))
  assert mask.sum() == 23 and indices[~mask].tolist() == [0]


# ----------------------------------------------------------------------------
# ImageNet streaming (tfds mock data: records of random size, 1000 classes).
# ----------------------------------------------------------------------------


@pytest.fixture
def mock_imagenet():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    yield tfds.data_source('imagenet2012', split='train')


def imagenet_config(tmp_path, **overrides):
  data_dir = tmp_path / 'tfds'
  if not data_dir.exists():
    fake_tfds_data_dir(data_dir, 'imagenet2012', '5.1.0')
  return config(tmp_path, name='imagenet2012', image_size=24, path=str(data_dir),
                **overrides)


def take(stream, count):
  return [next(stream) for _ in range(count)]


def stream(cfg, split='train', batch=8, start_step=0, process_index=0, process_count=1):
  return datasets.imagenet_stream(cfg, split, batch, seed=5, start_step=start_step,
                                  process_index=process_index, process_count=process_count)


def test_imagenet_train_batches_follow_the_seeded_plan(tmp_path, mock_imagenet):
  batches = take(stream(imagenet_config(tmp_path)), 3)

  for step, batch in enumerate(batches):
    assert batch['images'].shape == (8, 24, 24, 3) and batch['images'].dtype == np.uint8
    assert batch['labels'].dtype == np.int32
    expected = [int(mock_imagenet[int(i)]['label'])
                for i in datasets.train_batch_indices(5, step, 20, 8)]
    assert batch['labels'].tolist() == expected


def test_imagenet_processes_split_the_same_global_batch(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path)
  whole = take(stream(cfg), 2)
  halves = [take(stream(cfg, process_index=i, process_count=2), 2) for i in range(2)]

  for step in range(2):
    for key in ('images', 'labels'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])


def test_imagenet_resume_replays_the_same_batches(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path)
  uninterrupted = take(stream(cfg), 4)
  resumed = take(stream(cfg, start_step=2), 2)

  for original, replayed in zip(uninterrupted[2:], resumed):
    np.testing.assert_array_equal(original['images'], replayed['images'])
    np.testing.assert_array_equal(original['labels'], replayed['labels'])


def test_imagenet_max_train_examples_streams_a_fixed_subset(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path, max_train_examples=8)
  subset = np.sort(np.random.default_rng(0).choice(20, 8, replace=False))

  (batch,) = take(stream(cfg), 1)

  assert sorted(batch['labels'].tolist()) == sorted(
      int(mock_imagenet[int(i)]['label']) for i in subset)
  assert datasets.imagenet_split_sizes(cfg) == {'train': 8, 'validation': 20}


def test_imagenet_eval_pads_and_masks_the_last_batch(tmp_path, mock_imagenet):
  halves = [list(stream(imagenet_config(tmp_path), 'validation', batch=8,
                        process_index=i, process_count=2)) for i in range(2)]

  assert [len(h) for h in halves] == [3, 3]
  mask = np.concatenate([np.concatenate([halves[0][b]['mask'], halves[1][b]['mask']])
                         for b in range(3)])
  assert mask.tolist() == [True] * 20 + [False] * 4
  assert all(b['images'].shape == (4, 24, 24, 3) for h in halves for b in h)


def test_imagenet_without_a_prepared_copy(tmp_path):
  with pytest.raises(DatasetError) as error:
    stream(config(tmp_path, name='imagenet2012', path=str(tmp_path)))
  assert_one_line(error, 'no tfds-prepared imagenet2012', '--file_format=array_record',
                  '--config.dataset.path=')


def test_imagenet_stream_rejects_batches_that_do_not_split_over_processes(tmp_path):
  with pytest.raises(DatasetError) as error:
    stream(imagenet_config(tmp_path), batch=10, process_count=4)
  assert_one_line(error, 'global batch 10 does not divide over 4 processes')


def test_random_resized_crop_boxes_stay_inside_the_image_with_bounded_aspect():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = datasets.random_resized_crop_box(rng, 60, 90)
    assert 0 <= left < right <= 90 and 0 <= top < bottom <= 60
    assert 3 / 4 * 0.9 <= (right - left) / (bottom - top) <= 4 / 3 * 1.1  # after rounding


def test_eval_transform_takes_the_central_224_of_256():
  image = np.zeros((256, 320, 3), np.uint8)
  image[16:240, 48:272] = 255  # The central 224x224 square.

  out = datasets.eval_transform(image, 224)

  assert out.shape == (224, 224, 3) and out.min() == 255
  assert datasets.center_crop_box(256, 320, 224 / 256) == (48, 16, 272, 240)


def test_train_transform_is_deterministic_per_rng_and_flips_sometimes():
  image = random_images(1, 0, size=40)[0]
  first = datasets.train_transform(image, np.random.default_rng(1), 16)

  np.testing.assert_array_equal(first, datasets.train_transform(image, np.random.default_rng(1), 16))
  assert first.shape == (16, 16, 3) and first.dtype == np.uint8


# ----------------------------------------------------------------------------
# The real CIFAR-10 (JPEG image-folder tarball in ../shared/data).
# ----------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_CIFAR10_JPG.exists(), reason=f'{SHARED_CIFAR10_JPG} not present')
def test_shared_cifar10_jpeg_tarball(tmp_path):
  dataset = datasets.load_in_memory(config(tmp_path, path=str(SHARED_CIFAR10_JPG)))

  assert dataset.train.images.shape == (50000, 32, 32, 3)
  assert dataset.test.images.shape == (10000, 32, 32, 3)
  assert dataset.class_names == CIFAR10_CLASSES
  assert np.bincount(dataset.train.labels).tolist() == [5000] * 10
  np.testing.assert_allclose(dataset.mean, (0.4913, 0.4821, 0.4465), atol=2e-4)
  np.testing.assert_allclose(dataset.std, (0.2452, 0.2428, 0.2606), atol=2e-4)
