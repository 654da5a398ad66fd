"""resnet_jax/data/cache.py: decode once, reuse, rebuild a changed or damaged entry."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from resnet_jax.data import cache, in_memory, preprocessing

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    cifar10_python_files, cifar10_tarball, config, forbid_decoding, image_folder_files,
    isolated_tfds_data_dir, tiny_splits, write_tar)


def test_second_load_reads_the_cache_instead_of_decoding(tmp_path, cifar10_tarball, monkeypatch):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  first = in_memory.load(cfg)
  forbid_decoding(monkeypatch)

  second = in_memory.load(cfg)

  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert (first.class_names, first.mean, first.std) == (second.class_names, second.mean,
                                                        second.std)
  entries = list((tmp_path / 'cache').iterdir())
  assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {
      'train_images.npy', 'train_labels.npy', 'train_moments.npy', 'test_images.npy',
      'test_labels.npy', 'meta.json'}


def test_cache_dir_defaults_to_resnet_jax_cache_env(tmp_path, cifar10_tarball):
  in_memory.load(config(tmp_path, path=str(cifar10_tarball), cache_dir=''))

  assert len(list((tmp_path / 'env_cache').iterdir())) == 1


def test_a_changed_source_file_is_decoded_again(tmp_path, cifar10_tarball):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  in_memory.load(cfg)
  train, test = tiny_splits(10, seed=5)
  write_tar(cifar10_tarball, cifar10_python_files(train, test))

  dataset = in_memory.load(cfg)

  np.testing.assert_array_equal(dataset.train.images, train[0])


@pytest.mark.parametrize('damage', ['truncate_images', 'garble_meta', 'delete_labels'])
def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, cifar10_tarball,
                                                            caplog, damage):
  cfg = config(tmp_path, path=str(cifar10_tarball))
  expected = in_memory.load(cfg)
  (entry,) = (tmp_path / 'cache').iterdir()
  if damage == 'truncate_images':
    images = entry / 'train_images.npy'
    images.write_bytes(images.read_bytes()[:200])
  elif damage == 'garble_meta':
    (entry / 'meta.json').write_text('{not json')
  else:
    (entry / 'train_labels.npy').unlink()

  with caplog.at_level(logging.WARNING, logger='resnet_jax.data.cache'):
    rebuilt = in_memory.load(cfg)

  assert 'Ignoring unreadable dataset cache' in caplog.text
  np.testing.assert_array_equal(rebuilt.train.images, expected.train.images)
  assert cache.read_entry(entry) is not None  # the rebuilt entry is whole again


def test_unwritable_cache_dir_only_warns(tmp_path, cifar10_tarball, caplog):
  blocker = tmp_path / 'blocker'
  blocker.write_text('a file where the cache directory should go')

  with caplog.at_level(logging.WARNING, logger='resnet_jax.data.cache'):
    dataset = in_memory.load(config(tmp_path, path=str(cifar10_tarball),
                                             cache_dir=str(blocker / 'cache')))

  assert len(dataset.train.labels) == 12 and 'Cannot write dataset cache' in caplog.text


def test_a_zca_fit_is_cached_per_train_subset(tmp_path, monkeypatch):
  """Fitting ZCA on CIFAR-10 takes minutes of CPU; a second run with the same train
  examples reads it back, and another subset is fitted afresh."""
  path = write_tar(tmp_path / 'f.tar.gz', image_folder_files())
  cfg = config(tmp_path, name='folder', path=str(path), image_size=8, normalization='zca')
  first = in_memory.load(cfg)
  fits = []
  monkeypatch.setattr(preprocessing, 'fit_zca',
                      lambda images: fits.append(len(images)) or {'zca_matrix': None})

  second = in_memory.load(cfg)
  cfg.max_train_examples = 2
  in_memory.load(cfg)

  assert first.fitted['zca_matrix'].shape == (192, 192)
  for name, array in first.fitted.items():
    np.testing.assert_array_equal(second.fitted[name], array)
  assert fits == [2]
