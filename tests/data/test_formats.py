"""resnet_jax/data/formats.py: every accepted format, parallel decoding, format errors.

The one test on the full CIFAR-10 JPEG tarball skips when ../shared/data is absent.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image


from resnet_jax.data import formats, in_memory
from resnet_jax.errors import DatasetError

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    CIFAR10_CLASSES, assert_one_line, cifar10_binary_files,
    cifar10_python_files, cifar100_binary_files, cifar100_python_files, cifar10_tarball,
    config, extract, image_folder_files, isolated_tfds_data_dir, tiny_splits, write_files,
    write_tar)

SHARED_CIFAR10_JPG = Path(__file__).resolve().parents[3] / 'shared/data/cifar10-jpg.tar.gz'


# ----------------------------------------------------------------------------
# Formats.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('packaging', ['tarball', 'extracted'])
def test_cifar10_python_batches_load_as_nhwc_with_labels_and_class_names(tmp_path, packaging):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'cifar-10-python.tar.gz', cifar10_python_files(train, test))
  if packaging == 'extracted':
    path = extract(path, tmp_path / 'extracted')

  dataset = in_memory.load(config(tmp_path, path=str(path)))

  np.testing.assert_array_equal(dataset.train.images, train[0])
  np.testing.assert_array_equal(dataset.train.labels, train[1])
  np.testing.assert_array_equal(dataset.test.images, test[0])
  np.testing.assert_array_equal(dataset.test.labels, test[1])
  assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
  assert dataset.class_names == CIFAR10_CLASSES and dataset.num_classes == 10


def test_cifar100_python_uses_fine_labels_and_names(tmp_path):
  train, test = tiny_splits(100)
  path = write_tar(tmp_path / 'cifar-100-python.tar.gz', cifar100_python_files(train, test))

  dataset = in_memory.load(config(tmp_path, name='cifar100', path=str(path)))

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

  dataset = in_memory.load(config(tmp_path, name=name, path=str(path)))

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

  dataset = in_memory.load(config(tmp_path, name='svhn_cropped', path=str(tmp_path)))

  np.testing.assert_array_equal(dataset.train.images, train_images)
  assert dataset.train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
  assert dataset.test.labels.tolist() == [0, 2, 3, 4]
  assert dataset.class_names == tuple('0123456789')


def test_image_folder_sorts_classes_resizes_and_converts_grayscale(tmp_path):
  root = write_files(tmp_path / 'folder', image_folder_files())

  dataset = in_memory.load(config(tmp_path, name='folder', path=str(root)))

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

  dataset = in_memory.load(config(tmp_path, name='folder', path=str(path),
                                           image_size=16))

  assert dataset.train.images.shape == (3, 16, 16, 3)
  assert dataset.test.images.shape == (2, 16, 16, 3)
  assert dataset.class_names == ('apple', 'zebra')


def test_parallel_decoding_matches_serial_and_names_corrupt_files(tmp_path, monkeypatch):
  files = image_folder_files()
  serial = in_memory.load(config(tmp_path, name='folder', path=str(
      write_files(tmp_path / 'serial', files)), cache_dir=str(tmp_path / 'c1')))
  monkeypatch.setattr(formats, '_PARALLEL_DECODE_MIN', 0)  # Worker processes for any size.
  monkeypatch.setattr(formats, '_DECODE_CHUNK', 2)

  parallel = in_memory.load(config(tmp_path, name='folder', path=str(
      write_files(tmp_path / 'parallel', files)), cache_dir=str(tmp_path / 'c2')))
  files['test/zebra/1.jpg'] = b'truncated'
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='folder', path=str(
        write_files(tmp_path / 'broken', files)), cache_dir=str(tmp_path / 'c3')))

  np.testing.assert_array_equal(parallel.train.images, serial.train.images)
  np.testing.assert_array_equal(parallel.test.images, serial.test.images)
  assert_one_line(error, 'test/zebra/1.jpg', 'delete or replace')


# ----------------------------------------------------------------------------
# Errors: one line, naming the problem and the fix.
# ----------------------------------------------------------------------------


def test_file_that_is_no_dataset_format(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('hello')
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(path)))
  assert_one_line(error, 'notes.txt', 'not a recognised dataset file', 'CIFAR python')


def test_directory_without_a_known_layout(tmp_path):
  write_files(tmp_path / 'stuff', {'a.txt': b'x', 'b/c.txt': b'y'})
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(tmp_path / 'stuff')))
  assert_one_line(error, 'no recognised dataset layout', 'image-folder')


def test_corrupt_tarball_names_the_file(tmp_path, cifar10_tarball):
  cifar10_tarball.write_bytes(cifar10_tarball.read_bytes()[:3000])
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(cifar10_tarball)))
  assert_one_line(error, 'corrupt', 'cifar-10-python.tar.gz', 're-download')


def test_corrupt_pickle_names_the_member(tmp_path):
  train, test = tiny_splits(10)
  files = cifar10_python_files(train, test)
  files['cifar-10-batches-py/data_batch_3'] = b'\x80\x02garbage'
  path = write_tar(tmp_path / 'c.tar.gz', files)
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(path)))
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
    in_memory.load(config(tmp_path, path=str(path)))
  assert_one_line(error, 'test_batch', 'refusing to load builtins.print')


def test_corrupt_jpeg_names_the_file(tmp_path):
  files = image_folder_files()
  files['train/apple/broken.jpg'] = b'\xff\xd8\xff\xe0 definitely not a jpeg'
  root = write_files(tmp_path / 'folder', files)
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'train/apple/broken.jpg', 'delete or replace')


def test_image_folder_without_images(tmp_path):
  root = write_files(tmp_path / 'folder', {'train/cat/notes.txt': b'x', 'test/cat/a.txt': b'y'})
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'needs images in train/<class>/')


def test_image_folder_with_different_classes_in_train_and_test(tmp_path):
  files = image_folder_files()
  files['test/mango/0.png'] = files.pop('test/zebra/0.png')
  root = write_files(tmp_path / 'folder', files)
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='folder', path=str(root)))
  assert_one_line(error, 'different classes', "['zebra']", "['mango']", 'same class directories')


def test_labels_beyond_the_class_name_list(tmp_path):
  train, test = tiny_splits(10)
  files = cifar10_binary_files(train, test)
  files['cifar-10-batches-bin/batches.meta.txt'] = b'airplane\nautomobile\n'
  path = write_tar(tmp_path / 'c.tar.gz', files)
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(path)))
  assert_one_line(error, 'labels outside 0..1', 're-download')


def test_copy_of_another_dataset(tmp_path, cifar10_tarball):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='cifar100', path=str(cifar10_tarball)))
  assert_one_line(error, 'cifar10-python', 'not cifar100')


def test_image_size_that_a_fixed_size_format_cannot_give(tmp_path, cifar10_tarball):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(cifar10_tarball), image_size=64))
  assert_one_line(error, '32x32', '--config.dataset.image_size=32')


# ----------------------------------------------------------------------------
# The real CIFAR-10 (JPEG image-folder tarball in ../shared/data).
# ----------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_CIFAR10_JPG.exists(), reason=f'{SHARED_CIFAR10_JPG} not present')
def test_shared_cifar10_jpeg_tarball(tmp_path):
  dataset = in_memory.load(config(tmp_path, path=str(SHARED_CIFAR10_JPG)))

  assert dataset.train.images.shape == (50000, 32, 32, 3)
  assert dataset.test.images.shape == (10000, 32, 32, 3)
  assert dataset.class_names == CIFAR10_CLASSES
  assert np.bincount(dataset.train.labels).tolist() == [5000] * 10
  np.testing.assert_allclose(dataset.mean, (0.4913, 0.4821, 0.4465), atol=2e-4)
  np.testing.assert_allclose(dataset.std, (0.2452, 0.2428, 0.2606), atol=2e-4)
