"""resnet_jax/data/registry.py: a dataset is one row, and a new one is one register() call."""

import json

import numpy as np
import pytest

from resnet_jax import bench, data, schema, train
from resnet_jax.data import registry
from resnet_jax.errors import DatasetError
from resnet_jax.model import preset

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    assert_one_line, isolated_tfds_data_dir, png, write_files)

TINY_SHAPES = registry.Dataset('tiny_shapes', 2, formats=('image-folder',))


def tiny_shapes_folder(root):
  """Bright and dark 32x32 images, as train/<class>/<image> and test/<class>/<image>."""
  rng = np.random.default_rng(0)
  files = {}
  for split, count in (('train', 8), ('test', 2)):
    for label, (low, high) in enumerate(((0, 100), (156, 256))):
      for index in range(count):
        image = rng.integers(low, high, (32, 32, 3), np.uint8)
        files[f'{split}/class{label}/{index}.png'] = png(image)
  return write_files(root, files)


def test_the_named_datasets_are_rows_that_the_loaders_and_bench_read(tmp_path):
  config = schema.default_config()
  for name, classes in (('cifar10', 10), ('cifar100', 100), ('svhn_cropped', 10),
                        ('imagenet2012', 1000)):
    config.dataset.name = name
    assert registry.get(name).num_classes == classes
    assert data.num_classes(config.dataset) == bench.num_classes(config.dataset) == classes
  assert registry.accepting('image-folder') == ('cifar10', 'cifar100', 'svhn_cropped', 'folder')
  assert [name for name in ('cifar10', 'imagenet2012') if registry.get(name).streamed] == [
      'imagenet2012']


def test_an_unknown_name_lists_the_registered_ones():
  with pytest.raises(DatasetError) as error:
    registry.get('mnist')
  assert_one_line(error, "unknown dataset.name='mnist'", "'cifar10'", "'imagenet2012'")


def test_a_taken_name_cannot_be_registered_as_another_dataset():
  registry.register(TINY_SHAPES)
  registry.register(TINY_SHAPES)  # the same row again is harmless
  with pytest.raises(ValueError, match='registered already'):
    registry.register(registry.Dataset('tiny_shapes', 3, formats=('image-folder',)))


def test_a_registered_dataset_trains_from_its_row_alone(tmp_path):
  """One row, nothing else: the config check, the class count, the loader and the train
  loop all take the new name."""
  registry.register(TINY_SHAPES)
  config = schema.default_config()
  config.model = preset('resnet20')
  config.model.depth = 8
  config.dataset.update(dict(name='tiny_shapes', path=str(tiny_shapes_folder(tmp_path / 'd')),
                             cache_dir=str(tmp_path / 'cache')))
  config.update(dict(batch_size=8, eval_batch_size=8, num_train_steps=2, log_every_steps=1,
                     checkpoint_every_steps=2))
  schema.validate(config)
  assert data.num_classes(config.dataset) == 2

  results = train.train_and_evaluate(config, tmp_path / 'run')

  assert results['step'] == 2 and 0 <= results['test_accuracy'] <= 1
  recorded = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert recorded['dataset']['name'] == 'tiny_shapes'
