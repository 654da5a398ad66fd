"""Each paper's recipe as its authors ran it: the learning rate over the first iterations and
at every drop, and the optimiser state at the drops."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import optim

ROOT = Path(__file__).resolve().parents[1]
CIFAR_STEPS_PER_EPOCH = 50_000 // 128  # 390: the last partial batch is dropped, as in Lua


def recipe(config_file: str, arg=None):
  """configs/<config_file>'s get_config(arg), imported by path as launch.py does."""
  spec = importlib.util.spec_from_file_location('recipe_under_test', ROOT / 'configs' / config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def learning_rates(config, steps, total_steps=64_000):
  multiplier = optim.lr_multiplier(config, CIFAR_STEPS_PER_EPOCH, total_steps)
  return [config.learning_rate * float(multiplier(step)) for step in steps]


@pytest.mark.parametrize('depth, first_lr', [(20, 0.1), (56, 0.1), (110, 0.01), (1202, 0.01)])
def test_he_2015_warms_up_110_layers_and_deeper_at_0_01_for_400_iterations(depth, first_lr):
  config = recipe('resnet_cifar.py')
  config.model.depth = depth
  lrs = learning_rates(config, (0, 399, 400, 31_999, 32_000, 48_000, 63_999))
  assert lrs == pytest.approx([first_lr, first_lr, 0.1, 0.1, 0.01, 0.001, 0.001])


@pytest.mark.parametrize('depth, block', [(110, 'basic'), (164, 'bottleneck'),
                                          (1001, 'bottleneck')])
def test_he_2016_warms_up_every_cifar_run_at_0_01_for_400_iterations(depth, block):
  config = recipe('preact_cifar.py')
  config.model.depth, config.model.block = depth, block
  lrs = learning_rates(config, (0, 399, 400, 32_000, 48_000))
  assert lrs == pytest.approx([0.01, 0.01, 0.1, 0.01, 0.001])


def test_wrn_drops_the_lr_by_5_at_the_start_of_epochs_60_120_160_as_the_lua_code():
  config = recipe('wrn.py')
  total = 200 * CIFAR_STEPS_PER_EPOCH
  start_of = lambda epoch: (epoch - 1) * CIFAR_STEPS_PER_EPOCH  # 1-indexed epochs
  lrs = learning_rates(config, (0, start_of(60) - 1, start_of(60), start_of(120),
                                start_of(160), total - 1), total_steps=total)
  assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008])
  assert config.nesterov and config.reset_momentum_at_lr_drops


def test_the_short_cpu_recipe_is_cosine_nesterov_with_heavier_weight_decay():
  config = recipe('resnet_cifar.py', 'cpu')
  assert (config.num_epochs, config.num_train_steps, config.lr_schedule) == (30, -1, 'cosine')
  assert config.nesterov and config.weight_decay == 5e-4 and config.constant_warmup_steps == 0
  assert config.dataset.max_train_examples == -1 and config.batch_size == 128


def test_the_momentum_buffer_restarts_at_each_lr_drop_when_asked():
  """After a drop the first update is the gradient alone (Torch's fresh optim.sgd state):
  with Nesterov, g + momentum * g; without the reset the buffer carries on."""
  params = {'w': jnp.zeros(3)}
  grad = {'w': jnp.ones(3)}

  def updates_per_step(reset: bool):
    tx = optim.momentum_with_resets(0.9, True, [3] if reset else [])
    state = tx.init(params)
    out = []
    for _ in range(5):
      update, state = tx.update(grad, state, params)
      out.append(float(update['w'][0]))
    return out

  kept, reset = updates_per_step(False), updates_per_step(True)
  assert reset[:3] == pytest.approx(kept[:3])
  assert reset[3] == pytest.approx(1 + 0.9) and kept[3] > reset[3]
  assert reset[4] == pytest.approx(kept[1])  # as if training had started at the drop


def test_momentum_resets_follow_the_configured_drops_through_the_whole_optimiser():
  config = recipe('wrn.py')
  config.lr_boundaries_epochs = (2,)
  steps_per_epoch = 3
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps=12)
  params = {'kernel': jnp.ones((2, 2))}
  grads = {'kernel': jnp.full((2, 2), 0.5)}
  state = tx.init(params)
  updates = []
  for _ in range(8):
    update, state = tx.update(grads, state, params)
    updates.append(np.asarray(update['kernel'])[0, 0])
  # Step 6 (the first of epoch 3) is at lr x0.2 with a fresh buffer: the same update as
  # step 0 scaled by 0.2.
  assert updates[6] == pytest.approx(0.2 * updates[0], rel=1e-5)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(state)


@pytest.mark.parametrize('pad_mode', ['mean', 'black'])
def test_crop_padding_is_the_mean_colour_as_the_authors_pad_or_black_when_asked(pad_mode):
  """fb.resnet.torch normalises, then zero-pads (He et al.'s mean-subtracted inputs alike):
  the border is the mean colour, 0 after normalisation; 'black' pads the pixels first."""
  from resnet_jax import schema, train
  config = schema.default_config()
  config.augment.flip = False
  config.augment.pad_mode = pad_mode
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
  images = jnp.full((64, 8, 8, 3), 255, jnp.uint8)
  keys = jax.random.split(jax.random.key(0), 64)
  out = np.asarray(train.device_images(images, keys, config, mean, std, jnp.float32))
  inside = (1.0 - np.asarray(mean)) / np.asarray(std)
  border = np.zeros(3) if pad_mode == 'mean' else -np.asarray(mean) / np.asarray(std)
  is_inside = np.all(np.isclose(out, inside, atol=1e-5), axis=-1)
  is_border = np.all(np.isclose(out, border, atol=1e-5), axis=-1)
  assert np.all(is_inside | is_border) and is_border.any() and is_inside.any()
