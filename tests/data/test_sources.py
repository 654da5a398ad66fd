"""resnet_jax/data/sources.py: verified downloads through tfds, or a tfds-prepared copy."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from resnet_jax.data import in_memory, registry, sources
from resnet_jax.errors import DatasetError

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    assert_one_line, cifar10_binary_files, config, fake_tfds_data_dir,
    isolated_tfds_data_dir, tiny_splits, write_tar)


def test_failed_download_says_which_dataset_and_to_pass_a_local_copy(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise socket.gaierror(-2, 'Name or service not known')
  monkeypatch.setattr(socket, 'getaddrinfo', no_network)

  with pytest.raises(DatasetError) as error:
    in_memory.load(config(tmp_path, name='cifar100'))
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
  monkeypatch.setattr(sources, '_check_host_resolves', lambda url: None)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download', fake_download)

  dataset = in_memory.load(config(tmp_path, name='cifar10'))

  np.testing.assert_array_equal(dataset.train.images, train[0])
  ((manager, urls),) = requests
  (url,) = urls.values()
  assert manager._force_checksums_validation
  assert manager._url_infos[url].checksum  # tfds knows this URL's sha256
  assert Path(manager._download_dir) == tmp_path / 'cache' / 'downloads'


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'svhn_cropped'])
def test_every_download_url_has_a_tfds_registered_checksum(name):
  infos = sources._registered_url_infos(name)
  assert set(infos) == set(registry.get(name).download.values())
  assert all(len(info.checksum) == 64 and info.size > 0 for info in infos.values())


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
    dataset = in_memory.load(cfg)
    record = tfds.data_source('cifar10', split='train')[4]

  assert dataset.train.images.shape == (6, 32, 32, 3) and dataset.test.images.shape[0] == 6
  np.testing.assert_array_equal(dataset.train.images[4], record['image'])
  assert dataset.train.labels[4] == record['label'] and dataset.num_classes == 10
