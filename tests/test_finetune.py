"""Fine-tuning from converted torchvision weights: new head, full / linear probe / frozen BN."""

import jax
import numpy as np
import pytest

from resnet_jax import convert, errors, train
from resnet_jax.model import presets, resnet
from test_train import tiny_config


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A 'pretrained' ResNet-18 with 1000 classes, saved the way the converter saves one."""
  directory = tmp_path_factory.mktemp('resnet18_imagenet')
  config = presets.preset('resnet18')
  model = presets.build_model(config, 1000)
  variables = model.init(jax.random.PRNGKey(7), np.zeros((1, 64, 64, 3), np.float32),
                         train=False)
  stats = jax.tree.map(lambda x: x + 0.25, variables['batch_stats'])  # not the init values
  variables = {'params': variables['params'], 'batch_stats': stats}
  convert.save_converted(directory, config, 1000, jax.device_get(variables))
  return directory, jax.device_get(variables)


def finetune(tmp_path, directory, mode, **model_overrides):
  config = tiny_config(**{'init_from': str(directory), 'finetune_mode': mode,
                          'dataset.normalization': 'imagenet', 'num_train_steps': 2})
  config.model = presets.preset('resnet18')
  config.model.update(model_overrides)
  train.train_and_evaluate(config, tmp_path)
  from test_train import final_params
  import orbax.checkpoint as ocp
  step, params = final_params(tmp_path)
  stats = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / str(step) / 'state')
  return params, jax.tree.map(np.asarray, stats['batch_stats'])


def backbone(tree):
  return {k: v for k, v in tree.items() if k != 'head'}


def changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_linear_probe_trains_a_new_head_and_freezes_everything_else(tmp_path, pretrained):
  directory, source = pretrained
  params, stats = finetune(tmp_path, directory, 'linear_probe')
  assert params['head']['kernel'].shape == (512, 10)  # replaced for the 10 new classes
  assert not changed(backbone(params), backbone(source['params']))
  assert not changed(stats, source['batch_stats'])


def test_a_scanned_model_starts_from_unrolled_weights_stacked(tmp_path, pretrained):
  directory, source = pretrained
  params, stats = finetune(tmp_path, directory, 'linear_probe', scan_blocks=True)
  assert 'stage2_blocks' in params
  assert not changed(backbone(params), backbone(resnet.stack_repeated_blocks(source['params'])))
  assert not changed(stats, resnet.stack_repeated_blocks(source['batch_stats']))


def test_frozen_bn_trains_the_weights_but_keeps_the_running_statistics(tmp_path, pretrained):
  directory, source = pretrained
  params, stats = finetune(tmp_path, directory, 'frozen_bn')
  assert changed(backbone(params), backbone(source['params']))
  assert not changed(stats, source['batch_stats'])


def test_full_fine_tuning_updates_weights_and_statistics(tmp_path, pretrained):
  directory, source = pretrained
  params, stats = finetune(tmp_path, directory, 'full')
  assert changed(backbone(params), backbone(source['params']))
  assert changed(stats, source['batch_stats'])


def test_weights_of_another_architecture_are_refused_with_a_clear_error(tmp_path, pretrained):
  directory, _ = pretrained
  config = tiny_config(init_from=str(directory))  # a ResNet-8, not the ResNet-18 saved
  with pytest.raises(errors.ConfigError, match='init_from holds a resnet18'):
    train.train_and_evaluate(config, tmp_path)
