"""resnet_jax/data/in_memory.py: loading, statistics, synthetic data, config errors.

The format parsers, sources, cache, batch plans and ImageNet stream have
their own test modules (test_formats.py and so on).
"""

from __future__ import annotations

import numpy as np
import pytest


from resnet_jax.data import formats, in_memory
from resnet_jax.errors import DatasetError

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    assert_one_line, cifar10_python_files, cifar10_tarball, config,
    forbid_decoding, image_folder_files, isolated_tfds_data_dir, random_images, tiny_splits,
    write_files, write_tar)


# ----------------------------------------------------------------------------
# Statistics, subsets and synthetic data.
# ----------------------------------------------------------------------------


def test_mean_and_std_are_float64_statistics_of_the_train_split(tmp_path):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'c.tar.gz', cifar10_python_files(train, test))

  dataset = in_memory.load(config(tmp_path, path=str(path)))

  pixels = train[0].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(dataset.mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(dataset.std, pixels.std(0), rtol=1e-9)


def test_max_train_examples_is_a_fixed_sorted_subset_with_its_own_statistics(tmp_path):
  train, test = tiny_splits(10)
  path = write_tar(tmp_path / 'c.tar.gz', cifar10_python_files(train, test))
  cfg = config(tmp_path, path=str(path), max_train_examples=5)

  first = in_memory.load(cfg, seed=0)
  second = in_memory.load(cfg, seed=123)

  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert len(first.train.labels) == 5 and len(first.test.labels) == 4
  rows = [int(np.flatnonzero((train[0] == image).all(axis=(1, 2, 3)))[0])
          for image in first.train.images]
  assert rows == sorted(rows) and len(set(rows)) == 5
  pixels = train[0][rows].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(first.mean, pixels.mean(0), rtol=1e-12)


def test_synthetic_data_is_deterministic_per_seed_and_sized_by_config(tmp_path):
  cfg = config(tmp_path, name='synthetic', num_classes=7, image_size=8)

  dataset = in_memory.load(cfg, seed=1)
  again = in_memory.load(cfg, seed=1)
  other = in_memory.load(cfg, seed=2)
  sized = in_memory.load(config(tmp_path, name='synthetic', num_classes=7,
                                         max_train_examples=40), seed=1)

  assert dataset.train.images.shape == (1024, 8, 8, 3) and dataset.test.images.shape[0] == 256
  np.testing.assert_array_equal(dataset.train.images, again.train.images)
  assert not np.array_equal(dataset.train.images, other.train.images)
  assert dataset.num_classes == 7 and set(dataset.train.labels.tolist()) == set(range(7))
  np.testing.assert_allclose(dataset.mean, 0.5, atol=0.01)
  np.testing.assert_allclose(dataset.std, 0.29, atol=0.01)
  assert sized.train.images.shape == (40, 32, 32, 3)


# ----------------------------------------------------------------------------
# The validation hold-out (dataset.validation_examples).
# ----------------------------------------------------------------------------


@pytest.fixture
def six_per_class_tarball(tmp_path):
  """A CIFAR-10 copy whose 60 train images are all different, 6 of each class."""
  images = random_images(60, 7)
  images[:, 0, 0, 0] = np.arange(60)  # Row i is identified by its first byte.
  train = (images, np.repeat(np.arange(10), 6).astype(np.int32))
  test = (random_images(4, 8), np.arange(4).astype(np.int32))
  return write_tar(tmp_path / 'six.tar.gz', cifar10_python_files(train, test)), images


def rows_of(images: np.ndarray) -> list[int]:
  return images[:, 0, 0, 0].astype(int).tolist()


def test_validation_examples_are_held_out_class_balanced_and_never_trained_on(
    tmp_path, six_per_class_tarball):
  path, originals = six_per_class_tarball

  dataset = in_memory.load(config(tmp_path, path=str(path), validation_examples=20))

  train_rows, validation_rows = rows_of(dataset.train.images), rows_of(dataset.validation.images)
  assert not set(train_rows) & set(validation_rows)
  assert sorted(train_rows + validation_rows) == list(range(60))
  assert np.bincount(dataset.validation.labels, minlength=10).tolist() == [2] * 10
  np.testing.assert_array_equal(dataset.validation.labels, np.arange(60)[validation_rows] // 6)
  pixels = originals[train_rows].reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(dataset.mean, pixels.mean(0), rtol=1e-12)  # of what trains


def test_the_validation_split_is_fixed_by_the_seed(tmp_path, six_per_class_tarball):
  cfg = config(tmp_path, path=str(six_per_class_tarball[0]), validation_examples=20)

  held_out = {seed: rows_of(in_memory.load(cfg, seed=seed).validation.images)
              for seed in (0, 1)}

  assert rows_of(in_memory.load(cfg, seed=0).validation.images) == held_out[0]
  assert held_out[0] != held_out[1]


def test_max_train_examples_subsets_what_the_validation_split_leaves(
    tmp_path, six_per_class_tarball):
  cfg = config(tmp_path, path=str(six_per_class_tarball[0]), validation_examples=20,
               max_train_examples=15)

  dataset = in_memory.load(cfg, seed=3)

  assert len(dataset.train.labels) == 15 and len(dataset.validation.labels) == 20
  assert not set(rows_of(dataset.train.images)) & set(rows_of(dataset.validation.images))
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(six_per_class_tarball[0]),
                                   validation_examples=20, max_train_examples=41))
  assert_one_line(error, 'max_train_examples=41', '1..40', 'less the 20 of'
                  ' dataset.validation_examples')


@pytest.mark.parametrize('count, fragment', [
    (15, 'positive multiple of the 10 classes'), (60, 'too large'), (-10, 'use 0')])
def test_validation_examples_that_cannot_be_held_out_equally(tmp_path, six_per_class_tarball,
                                                             count, fragment):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(six_per_class_tarball[0]),
                                   validation_examples=count))
  assert_one_line(error, f'dataset.validation_examples={count}', fragment)


def test_synthetic_data_holds_out_validation_examples_beside_its_train_size(tmp_path):
  cfg = config(tmp_path, name='synthetic', num_classes=4, image_size=8, max_train_examples=40,
               validation_examples=8)

  dataset = in_memory.load(cfg, seed=1)

  assert len(dataset.train.labels) == 40 and len(dataset.validation.labels) == 8
  assert np.bincount(dataset.validation.labels).tolist() == [2] * 4


# ----------------------------------------------------------------------------
# Errors: one line, naming the problem and the fix.
# ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(tmp_path / 'nowhere')))
  assert_one_line(error, 'nowhere', 'does not exist', '--config.dataset.path=')


def test_unknown_dataset_name_lists_the_allowed_ones(tmp_path):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='mnist'))
  assert_one_line(error, "'mnist'", 'cifar10', 'svhn_cropped', 'folder', 'imagenet2012')


@pytest.mark.parametrize('max_train_examples', [0, 13, -5])
def test_max_train_examples_outside_the_train_split(tmp_path, cifar10_tarball,
                                                    max_train_examples):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, path=str(cifar10_tarball),
                                   max_train_examples=max_train_examples))
  assert_one_line(error, f'max_train_examples={max_train_examples}', '1..12', 'use -1')


def test_folder_class_count_that_contradicts_a_named_dataset(tmp_path):
  root = write_files(tmp_path / 'folder', image_folder_files())
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='cifar10', path=str(root)))
  assert_one_line(error, 'holds 2 classes', 'cifar10 needs 10')


def test_folder_without_a_path(tmp_path):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='folder'))
  assert_one_line(error, "'folder' needs --config.dataset.path=")


def test_synthetic_without_num_classes(tmp_path):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='synthetic'))
  assert_one_line(error, 'num_classes >= 2', '--config.dataset.num_classes=')


def test_imagenet_is_not_loaded_into_memory(tmp_path):
  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='imagenet2012'))
  assert_one_line(error, 'imagenet_stream')


# ----------------------------------------------------------------------------
# num_classes without loading.
# ----------------------------------------------------------------------------


def test_num_classes_of_named_datasets_needs_no_data(tmp_path):
  assert [in_memory.num_classes(config(tmp_path, name=name))
          for name in ('cifar10', 'cifar100', 'svhn_cropped', 'imagenet2012')] == [10, 100, 10, 1000]
  assert in_memory.num_classes(config(tmp_path, name='synthetic', num_classes=3)) == 3
  with pytest.raises(DatasetError) as error:
    in_memory.num_classes(config(tmp_path, name='cifar100', num_classes=10))
  assert_one_line(error, 'contradicts cifar100', 'dataset.num_classes=-1')


@pytest.mark.parametrize('packaging', ['directory', 'tarball'])
def test_num_classes_of_a_folder_counts_its_class_directories(tmp_path, packaging, monkeypatch):
  files = image_folder_files()
  if packaging == 'tarball':
    path = write_tar(tmp_path / 'f.tar.gz', files)
  else:
    path = write_files(tmp_path / 'folder', files)
  forbid_decoding(monkeypatch)

  assert in_memory.num_classes(config(tmp_path, name='folder', path=str(path))) == 2
  assert in_memory.num_classes(config(tmp_path, name='folder', path=str(path),
                                     num_classes=5)) == 5


def test_num_classes_of_a_decoded_folder_comes_from_the_cache(tmp_path, monkeypatch):
  path = write_tar(tmp_path / 'f.tar.gz', image_folder_files())
  cfg = config(tmp_path, name='folder', path=str(path))
  in_memory.load(cfg)
  monkeypatch.setattr(formats, '_list_tree_names', None)  # Listing would now fail.

  assert in_memory.num_classes(cfg) == 2
