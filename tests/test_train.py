"""The training engine: steps, data parallelism, resume, preemption, divergence, outputs."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpoint, errors, metrics, optim, parallel, schema, train
from resnet_jax.data import preprocessing
from resnet_jax.model import presets

ROOT = Path(__file__).resolve().parents[1]

# A CPU-sized run: ResNet-8 on synthetic CIFAR-shaped data.
TINY_OVERRIDES = {
    'dataset.name': 'synthetic', 'dataset.num_classes': 10, 'dataset.max_train_examples': 256,
    'model.depth': 8, 'batch_size': 32, 'eval_batch_size': 64, 'num_train_steps': 12,
    'log_every_steps': 2, 'checkpoint_every_steps': 4, 'eval_every_epochs': 100.0,
    'lr_schedule': 'cosine',
}


def tiny_config(**overrides):
  config = schema.default_config()
  config.model = presets.preset('resnet20')
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# Execs the rest of the command line with SIGINT at its default action, as an interactive
# shell starts a program (a shell's background job inherits SIGINT ignored).
SIGINT_DEFAULT = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                  'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')


def launch(workdir, *, devices=8, extra=(), overrides=None, env=None, ctrl_c_reaches_python=False,
           **popen):
  """Runs launch.py in a fresh process with `devices` simulated CPU devices."""
  flags = [f'--config.{k}={v}' for k, v in {**TINY_OVERRIDES, **(overrides or {})}.items()]
  command = [sys.executable, str(ROOT / 'launch.py'), f'--config={ROOT}/configs/resnet_cifar.py',
             f'--workdir={workdir}', *flags, *extra]
  if ctrl_c_reaches_python:
    command[1:1] = ['-c', SIGINT_DEFAULT]
  environment = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
                 'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def run_launch(workdir, **kwargs):
  process = launch(workdir, **kwargs)
  output, _ = process.communicate(timeout=600)
  return process.returncode, output


def final_params(workdir):
  """The step and params of the newest checkpoint in `workdir`, read as host arrays."""
  step, state = final_state(workdir)
  return step, state['params']


def final_state(workdir):
  """The step and whole train state of the newest checkpoint in `workdir`, as host arrays."""
  import orbax.checkpoint as ocp
  directory = Path(workdir) / 'checkpoints'
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  path = directory / str(step) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  on_one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, 'item_metadata', metadata)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_one_device),
                        metadata)
  state = checkpointer.restore(path, target)
  return step, jax.tree.map(np.asarray, state)


def assert_trees_equal(a, b, **tolerance):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance) if tolerance
               else np.testing.assert_array_equal(x, y), a, b)


# ----------------------------------------------------------------------------- steps


def make_step(config, mesh, num_classes=10, image_size=32):
  model = presets.build_model(config.model, num_classes, bn_axis_name=parallel.DATA_AXIS
                              if config.sync_batch_stats else None)
  tx = optim.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  multiplier = optim.lr_multiplier(config, 10, 100)
  state = train.create_train_state(model, tx, config, mesh, image_size)
  step = train.make_train_step(train.make_local_train_step(
      model, tx, multiplier, config, (0.5,) * 3, (0.25,) * 3, num_classes), mesh)
  return state, step


def fixed_batch(mesh, size=32, seed=0, image_size=32, normalization='dataset'):
  rng = np.random.default_rng(seed)
  arrays = {'images': rng.integers(0, 256, (size, image_size, image_size, 3), dtype=np.uint8),
            'labels': rng.integers(0, 10, size).astype(np.int32)}
  arrays.update(preprocessing.fit(normalization, arrays['images']))
  return (parallel.put(arrays, parallel.replicated(mesh)),
          parallel.put({'indices': np.arange(size, dtype=np.int32)},
                       parallel.batch_sharded(mesh)))


def test_a_train_step_lowers_the_loss_on_a_fixed_batch():
  config = tiny_config(**{'augment.crop_padding': 0, 'augment.flip': False})
  mesh = parallel.data_mesh(jax.devices()[:1])
  state, step = make_step(config, mesh)
  arrays, batch = fixed_batch(mesh)
  losses = []
  # 12 steps: the classifier starts at Torch's U(+-1/sqrt(fan_in)) (resnet.head_kernel_init),
  # sqrt(3) narrower than Flax's default, and halves this loss at step 12 instead of 8.
  for _ in range(12):
    state, metrics = step(state, arrays, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize('normalization', preprocessing.FITTED)
def test_a_step_trains_on_images_normalised_per_pixel_before_augmentation(normalization):
  """pixel_mean / zca arrays sit beside the images; the step whitens, then pads and crops."""
  config = tiny_config(**{'dataset.normalization': normalization, 'dataset.image_size': 8,
                          'augment.crop_padding': 0, 'augment.flip': False})
  mesh = parallel.data_mesh(jax.devices()[:1])
  state, step = make_step(config, mesh, image_size=8)
  arrays, batch = fixed_batch(mesh, image_size=8, normalization=normalization)
  losses = []
  for _ in range(8):
    state, metrics = step(state, arrays, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses


def test_whitened_images_are_padded_with_the_whitened_zero():
  """The authors augmented preprocessed images: a crop's border is 0 after whitening."""
  config = tiny_config(**{'augment.crop_padding': 4, 'augment.flip': False})
  images = preprocessing.apply(jnp.full((64, 8, 8, 3), 200, jnp.uint8),
                               {'pixel_mean': jnp.full((8, 8, 3), 0.5)})
  keys = jax.random.split(jax.random.PRNGKey(0), 64)
  out = np.asarray(train.device_images(images, keys, config, (0.5,) * 3, (0.25,) * 3,
                                       jnp.float32))
  np.testing.assert_allclose(np.unique(out), [0.0, 200 / 255 - 0.5], atol=1e-6)


def test_ten_crop_evaluation_averages_the_logits_of_each_examples_crops():
  config = tiny_config()
  mesh = parallel.data_mesh(jax.devices()[:1])
  model = presets.build_model(config.model, 10)
  state, _ = make_step(config, mesh)
  eval_step = train.make_eval_step(model, config, mesh, (0.5,) * 3, (0.25,) * 3, 10)
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (4, 10, 32, 32, 3), np.uint8)
  labels = np.arange(4, dtype=np.int32)
  sharding = parallel.batch_sharded(mesh)

  sums = eval_step(state, {}, parallel.put(
      {'images': crops, 'labels': labels, 'mask': np.ones(4, bool)}, sharding))

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = model.apply(variables, (crops.reshape(40, 32, 32, 3) / 255 - 0.5) / 0.25,
                       train=False).reshape(4, 10, 10).mean(axis=1)
  expected = train.cross_entropy(logits, labels, 10).sum()
  assert float(sums['loss']) == pytest.approx(float(expected), rel=1e-4)
  assert float(sums['correct']) == float(np.sum(np.argmax(logits, -1) == labels))


@pytest.mark.parametrize('sync_batch_stats', [True, False])
def test_one_and_eight_devices_give_the_same_loss_and_batch_statistics(sync_batch_stats):
  """Same global batch, same seed: equal up to float reassociation.

  Loss and BN statistics within rtol 1e-4; parameters after 3 steps within 1e-4 absolute.

  With `sync_batch_stats=False` each device normalises with its own batch statistics
  (as pmap-era code did), so only the synced variant is expected to match.
  """
  config = tiny_config(sync_batch_stats=sync_batch_stats, learning_rate=0.01)
  results = {}
  for devices in (1, 8):
    mesh = parallel.data_mesh(jax.devices()[:devices])
    state, step = make_step(config, mesh)
    arrays, batch = fixed_batch(mesh)
    for _ in range(3):
      state, metrics = step(state, arrays, batch)
    results[devices] = (float(metrics['loss']), jax.device_get(state.batch_stats),
                        jax.device_get(state.params))
  if sync_batch_stats:
    assert results[1][0] == pytest.approx(results[8][0], rel=1e-4)
    assert_trees_equal(results[1][1], results[8][1], rtol=1e-4, atol=1e-5)
    assert_trees_equal(results[1][2], results[8][2], rtol=1e-3, atol=1e-4)
  else:
    assert results[1][0] != pytest.approx(results[8][0], rel=1e-4)


def test_learning_rate_and_weight_decay_are_inputs_of_the_compiled_step_not_constants():
  config = tiny_config()
  mesh = parallel.data_mesh(jax.devices()[:1])
  state, step = make_step(config, mesh)
  arrays, batch = fixed_batch(mesh)
  params_before = jax.device_get(state.params)

  def with_hyperparams(state, **values):
    hyper = state.opt_state.hyperparams
    new = {k: jnp.asarray(v, hyper[k].dtype) for k, v in values.items()}
    return state.replace(opt_state=state.opt_state._replace(hyperparams={**hyper, **new}))

  frozen, metrics = step(with_hyperparams(state, learning_rate=0.0, weight_decay=0.0), arrays,
                         batch)
  assert float(metrics['lr']) == 0.0
  assert_trees_equal(jax.device_get(frozen.params), params_before)
  moved, metrics = step(with_hyperparams(frozen, learning_rate=0.05, weight_decay=1e-3), arrays,
                        batch)
  assert float(metrics['lr']) == pytest.approx(0.05 * float(optim.lr_multiplier(
      config, 10, 100)(1)))
  assert step._cache_size() == 1  # one compiled program served every value


def test_inputs_can_be_resized_on_the_device_to_a_pretrained_backbones_resolution():
  config = tiny_config(**{'augment.resize_to': 64})
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  for example_keys in (keys, None):  # train (augmented) and eval
    out = train.device_images(jnp.asarray(images), example_keys, config, (0.5,) * 3,
                               (0.25,) * 3, jnp.float32)
    assert out.shape == (4, 64, 64, 3) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- schedules


def test_step_schedule_multiplies_by_the_decay_factor_at_each_boundary():
  config = tiny_config(lr_schedule='step', lr_boundaries_epochs=(60, 120, 160),
                       lr_decay_factor=0.2)
  multiplier = optim.lr_multiplier(config, steps_per_epoch=10, total_steps=2000)
  values = [float(multiplier(s)) for s in (0, 599, 600, 1199, 1200, 1600, 1999)]
  assert values == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.008, 0.008])


def test_step_boundaries_in_iterations_replace_epochs_for_the_he_et_al_recipe():
  config = tiny_config(lr_schedule='step', lr_boundaries_steps=(32000, 48000),
                       lr_decay_factor=0.1)
  multiplier = optim.lr_multiplier(config, steps_per_epoch=390, total_steps=64000)
  assert [float(multiplier(s)) for s in (31999, 32000, 48000)] == pytest.approx([1, .1, .01])


@pytest.mark.parametrize('config_file, depth, warm_steps', [
    ('resnet_cifar.py', 56, 0), ('resnet_cifar.py', 110, 400), ('resnet_cifar.py', 1202, 400),
    ('preact_cifar.py', 164, 400)])
def test_he_et_al_start_110_layers_and_deeper_at_a_tenth_of_the_rate_for_400_steps(
    config_file, depth, warm_steps):
  config = config_flags_free_load(config_file)
  config.model.depth = depth
  multiplier = optim.lr_multiplier(config, steps_per_epoch=391, total_steps=64000)
  early, after = float(multiplier(0)), float(multiplier(400))
  assert (early, after) == pytest.approx((0.1 if warm_steps else 1.0, 1.0))
  assert float(multiplier(399)) == pytest.approx(early)


def config_flags_free_load(config_file: str, arg=None):
  """configs/<config_file>'s get_config(arg), imported by path as launch.py does."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('config_under_test', ROOT / 'configs' / config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_imagenet_config_decays_as_fb_resnet_torch_and_he2015_tests_on_ten_crops():
  config = config_flags_free_load('resnet_imagenet.py')
  schema.validate(config)
  multiplier = optim.lr_multiplier(config, steps_per_epoch=100, total_steps=9000)
  for epoch in (1, 30, 31, 60, 61, 90):  # fb.resnet.torch train.lua: 0.1^floor((epoch-1)/30)
    assert float(multiplier((epoch - 1) * 100 + 50)) == pytest.approx(0.1 ** ((epoch - 1) // 30))
  assert config.num_epochs == 90 and config.augment.train_crop == 'random_resized'

  he2015 = config_flags_free_load('resnet_imagenet.py', 'he2015')
  schema.validate(he2015)
  assert (he2015.augment.train_crop, tuple(he2015.augment.scale_range), he2015.augment.pca_noise,
          he2015.augment.eval_crops) == ('scale', (256, 480), 0.1, 10)
  schema.validate(config_flags_free_load('resnet_imagenet.py', 'he2015,quick'))


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
  config = tiny_config(lr_schedule='cosine', warmup_epochs=1.0)
  multiplier = optim.lr_multiplier(config, steps_per_epoch=10, total_steps=110)
  assert float(multiplier(0)) == pytest.approx(0.1)
  assert float(multiplier(9)) == pytest.approx(1.0)
  assert float(multiplier(60)) == pytest.approx(0.5, abs=0.02)
  assert float(multiplier(110)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('decay_bn_and_bias', [True, False])
def test_weight_decay_reaches_bn_and_bias_only_when_switched_on(decay_bn_and_bias):
  config = tiny_config(weight_decay=0.1, momentum=0.0, learning_rate=1.0,
                       decay_bn_and_bias=decay_bn_and_bias, lr_schedule='constant')
  tx = optim.create_optimizer(config, 10, 100)
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 1))}, 'bn': {'scale': jnp.ones((4,))}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert float(updates['conv']['kernel'][0, 0, 0, 0]) == pytest.approx(-0.1)
  assert float(updates['bn']['scale'][0]) == pytest.approx(-0.1 if decay_bn_and_bias else 0.0)


# ----------------------------------------------------------------------------- the loop


def test_training_writes_metrics_tensorboard_config_and_results(tmp_path):
  results = train.train_and_evaluate(tiny_config(), tmp_path)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  keys = set().union(*records)
  assert {'step', 'train/loss', 'train/lr', 'eval/accuracy', 'eval/loss',
          'throughput/img_per_s'} <= keys
  assert json.loads((tmp_path / 'config.json').read_text())['model']['depth'] == 8
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert json.loads((tmp_path / 'results.json').read_text()) == pytest.approx(results)
  assert results['step'] == 12 and 0.0 <= results['test_accuracy'] <= 1.0


def test_evaluation_covers_the_whole_test_split_with_the_padding_masked(tmp_path):
  """256 test images in batches of 96: the last batch is padded, and the padding ignored."""
  config = tiny_config(eval_batch_size=96, num_train_steps=2)
  results = train.train_and_evaluate(config, tmp_path)
  from resnet_jax.data import in_memory
  dataset = in_memory.load(config.dataset, seed=config.seed)
  mesh = parallel.data_mesh()
  state_template, _ = make_step(config, mesh)
  _, state = checkpoint.Checkpointer(tmp_path / 'checkpoints').restore_latest(
      train.abstract_state(state_template, mesh))
  model = presets.build_model(config.model, 10)
  images = (dataset.test.images / 255.0 - np.asarray(dataset.mean)) / np.asarray(dataset.std)
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                       jnp.asarray(images, jnp.float32), train=False)
  expected = float(np.mean(np.argmax(logits, -1) == dataset.test.labels))
  assert len(dataset.test.labels) % 96 != 0
  assert results['test_accuracy'] == pytest.approx(expected, abs=1e-6)


def test_validation_examples_are_evaluated_beside_the_test_split_and_pick_the_best(
    tmp_path, monkeypatch):
  chosen_on = []
  real = checkpoint.Checkpointer
  monkeypatch.setattr(train.checkpoint, 'Checkpointer', lambda *args, **kwargs: (
      chosen_on.append(kwargs['best_metric']), real(*args, **kwargs))[1])
  config = tiny_config(**{'dataset.validation_examples': 40, 'eval_every_epochs': 0.5})

  results = train.train_and_evaluate(config, tmp_path)

  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  evaluations = [r for r in records if 'eval/accuracy' in r]
  assert len(evaluations) == 3  # steps 4, 8 and 12: every evaluation covers both splits
  assert all({'val/accuracy', 'val/loss'} <= set(r) for r in evaluations)
  assert results['val_accuracy'] == evaluations[-1]['val/accuracy']
  assert results['val_error'] == pytest.approx(1 - results['val_accuracy'])
  best = max(evaluations, key=lambda r: r['val/accuracy'])
  assert results['test_accuracy_at_best_val'] == best['eval/accuracy']
  assert chosen_on == ['val/accuracy']  # never the test split


def is_finite(tree) -> bool:
  return all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree))


def test_a_diverging_run_saves_nothing_after_it_and_a_rerun_resumes_from_a_good_state(tmp_path):
  """lr 0.01 for 4 steps, then x1e30 (a step 'decay' that multiplies): steps 5-6 blow up.

  Checkpoints every 2 steps, keep_checkpoints=1. Step 2 is good: training went on from it
  to the save at step 4 with every value finite. Step 4 is followed by the divergence, so
  it is set aside; retention had to keep step 2 although it keeps only the newest.
  """
  diverging = dict(learning_rate=0.01, lr_schedule='step', lr_boundaries_steps=(4,),
                   lr_decay_factor=1e30, log_every_steps=1, checkpoint_every_steps=2,
                   keep_checkpoints=1, num_train_steps=8)
  with pytest.raises(errors.TrainingDiverged) as error:
    train.train_and_evaluate(tiny_config(**diverging), tmp_path)
  message = str(error.value)
  assert 'training diverged; the last good checkpoint is step 2, where a rerun resumes' in message
  assert '(checkpoint 4 set aside as <step>.diverged-*)' in message and '\n' not in message
  checkpoints = tmp_path / 'checkpoints'
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ['2']
  assert len(list(checkpoints.glob('4.diverged-*'))) == 1
  step, state = final_state(tmp_path)
  assert step == 2 and is_finite(state['params']) and is_finite(state['batch_stats'])

  # Rerun with a learning rate 1e30 times lower: 0.01 after the boundary.
  results = train.train_and_evaluate(tiny_config(**{**diverging, 'learning_rate': 1e-32}),
                                     tmp_path)
  assert results['step'] == 8 and np.isfinite(results['train_loss'])
  assert np.isfinite(results['test_loss'])
  logged = [r['step'] for r in metrics.read_metrics(tmp_path) if 'train/loss' in r]
  assert logged == list(range(1, 9))  # the diverged segment's steps 3-6 are not counted


def test_batch_size_must_split_evenly_over_the_devices(tmp_path):
  with pytest.raises(errors.ConfigError, match='not divisible by the 8 devices'):
    train.train_and_evaluate(tiny_config(batch_size=30), tmp_path)


def test_sigterm_during_an_evaluation_stops_it_saves_and_a_rerun_finishes(tmp_path,
                                                                        monkeypatch):
  """The evaluation at step 4 has 32 batches of 8; SIGTERM arrives in its second."""
  real_eval_step, calls = train.make_eval_step, []

  def eval_step_that_gets_a_sigterm(*args):
    step = real_eval_step(*args)

    def run(*inputs):
      calls.append(1)
      if len(calls) == 3:  # call 1 is the memory check before training
        os.kill(os.getpid(), signal.SIGTERM)
      return step(*inputs)
    return run

  monkeypatch.setattr(train, 'make_eval_step', eval_step_that_gets_a_sigterm)
  config = tiny_config(eval_batch_size=8, eval_every_epochs=0.5)  # an evaluation every 4 steps
  assert train.train_and_evaluate(config, tmp_path) == {
      'step': 4, 'preempted': True, 'signal': 'SIGTERM'}
  assert len(calls) == 3  # stopped after the batch in flight, not after 32
  assert (tmp_path / 'checkpoints' / '4').exists()
  assert not [r for r in metrics.read_metrics(tmp_path) if 'eval/loss' in r]
  assert train.train_and_evaluate(config, tmp_path)['step'] == 12


@pytest.fixture
def ctrl_c_reaches_python():
  """SIGINT as an interactive shell leaves it to Python. A shell's background job (`&`)
  starts with SIGINT ignored, and the code rightly leaves an ignored SIGINT alone."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_a_first_ctrl_c_asks_to_stop_and_a_second_one_ends_the_process(ctrl_c_reaches_python):
  flag = train.PreemptionFlag()
  try:
    with pytest.raises(KeyboardInterrupt):  # before training: nothing to save
      os.kill(os.getpid(), signal.SIGINT)
    flag.arm()
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.requested == 'Ctrl-C' and flag.agreed()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the next one kills at once
  finally:
    flag.restore()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_workdir_that_is_a_file_or_inside_one_is_a_one_line_error(tmp_path):
  a_file = tmp_path / 'results.txt'
  a_file.write_text('not a folder')
  for workdir, message in ((a_file, 'is a file'), (a_file / 'run', 'cannot create')):
    with pytest.raises(errors.WorkdirError, match=message) as error:
      train.train_and_evaluate(tiny_config(), workdir)
    assert '\n' not in str(error.value)


def test_an_eval_batch_that_does_not_fit_stops_before_training(tmp_path, monkeypatch):
  def out_of_memory(*args):
    def run(*inputs):
      raise jax.errors.JaxRuntimeError(
          'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81920000000 bytes.')
    return run
  monkeypatch.setattr(train, 'make_eval_step', out_of_memory)
  with pytest.raises(errors.ConfigError, match='eval_batch_size=64 does not fit in device '
                     'memory .*; lower eval_batch_size'):
    train.train_and_evaluate(tiny_config(), tmp_path)
  assert not (tmp_path / 'metrics.jsonl').exists()
  assert not [p for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]


def test_a_full_disk_during_a_save_is_one_line_and_the_earlier_checkpoint_resumes(
    tmp_path, monkeypatch):
  real_save = checkpoint.Checkpointer.save

  def save_until_the_disk_is_full(self, step, *args, **kwargs):
    if step > 4:
      raise OSError(errno.ENOSPC, 'No space left on device', str(self.directory / str(step)))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_until_the_disk_is_full)
  with pytest.raises(errors.WorkdirError) as error:
    train.train_and_evaluate(tiny_config(), tmp_path)
  assert str(error.value).startswith('no space left on device writing ')
  assert 'free space and rerun the same command: a rerun resumes from checkpoint step 4' in \
      str(error.value)
  monkeypatch.undo()
  assert train.train_and_evaluate(tiny_config(), tmp_path)['step'] == 12


# ----------------------------------------------------------------------------- processes


CALM = {'learning_rate': 0.01}  # a calm trajectory, so float reassociation stays small


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """One uninterrupted 12-step run on 8 devices, the yardstick of the process tests."""
  workdir = tmp_path_factory.mktemp('reference')
  code, output = run_launch(workdir, overrides=CALM)
  assert code == 0, output
  return workdir


def copy_of(run: Path, destination: Path, keep_steps) -> Path:
  """A copy of a finished run cut back to the checkpoints in `keep_steps`."""
  import shutil
  shutil.copytree(run, destination)
  (destination / 'results.json').unlink()
  for path in (destination / 'checkpoints').iterdir():
    if path.name.isdigit() and int(path.name) not in keep_steps:
      shutil.rmtree(path)
  return destination


def wait_for(path: Path, timeout_s: float = 300) -> None:
  deadline = time.time() + timeout_s
  while not path.exists() and time.time() < deadline:
    time.sleep(0.05)


def test_rerunning_after_kill_9_resumes_and_ends_with_the_same_parameters(tmp_path,
                                                                          reference_run):
  process = launch(tmp_path, overrides=CALM)
  wait_for(tmp_path / 'checkpoints' / '4')
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (tmp_path / 'results.json').exists()  # it really died mid-run
  code, output = run_launch(tmp_path, overrides=CALM)
  assert code == 0, output
  assert 'Resuming from checkpoint at step' in output
  assert f'Took over the lock of pid {process.pid} on host {socket.gethostname()}' in output
  step_a, params_a = final_params(reference_run)
  step_b, params_b = final_params(tmp_path)
  assert step_a == step_b == 12
  assert_trees_equal(params_a, params_b)


def test_a_checkpoint_written_on_8_devices_resumes_on_1(tmp_path, reference_run):
  workdir = copy_of(reference_run, tmp_path / 'run', keep_steps={4})
  code, output = run_launch(workdir, devices=1, overrides={**CALM, 'num_train_steps': 8})
  assert code == 0, output
  assert 'Resuming from checkpoint at step 4' in output
  assert final_params(workdir)[0] == 8


def test_a_resumed_run_takes_the_learning_rate_of_its_config_and_says_so(tmp_path,
                                                                          reference_run):
  workdir = copy_of(reference_run, tmp_path / 'run', keep_steps={4})
  code, output = run_launch(workdir, overrides={'learning_rate': 0.02, 'num_train_steps': 6})
  assert code == 0, output
  assert "Resuming with the config's learning_rate 0.01 -> 0.02" in output
  resumed = final_state(workdir)[1]['opt_state']['hyperparams']
  reference = final_state(reference_run)[1]['opt_state']['hyperparams']
  assert float(resumed['learning_rate']) == pytest.approx(0.02)
  assert float(reference['learning_rate']) == pytest.approx(0.01)
  assert float(resumed['weight_decay']) == float(reference['weight_decay'])  # unchanged
  # config.json still says how the run started; the record says what produced its results.
  assert json.loads((workdir / 'config.json').read_text())['learning_rate'] == 0.01
  record = metrics.read_config_record(workdir)
  assert (record['learning_rate'], record['num_train_steps']) == (0.02, 6)


def snapshot(workdir: Path) -> dict:
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob('*')}


def test_a_resume_with_another_network_is_refused_in_one_line_and_writes_nothing(
    tmp_path, reference_run):
  """Option A and no shortcut have the same parameter shapes: only the record tells them
  apart. The reference run is complete, so it would have reported its own results."""
  workdir = Path(shutil.copytree(reference_run, tmp_path / 'run'))
  before = snapshot(workdir)
  shortcut = json.loads((workdir / 'config.json').read_text())['model']['shortcut']
  code, output = run_launch(workdir, overrides={**CALM, 'model.shortcut': 'none'})
  assert code == 1
  assert output.strip().splitlines()[-1] == (
      f"error: {workdir} holds a run of another config: model.shortcut {shortcut!r} -> 'none'; "
      'a resume may change only the run length, learning_rate, weight_decay, momentum and the '
      'logging, eval and checkpoint cadence; use a fresh workdir '
      f'(--workdir={workdir}_shortcut=none) or drop these changes to resume'), output
  assert snapshot(workdir) == before


def test_without_a_record_other_parameter_shapes_are_still_one_line(tmp_path, reference_run):
  workdir = copy_of(reference_run, tmp_path / 'run', keep_steps={4})
  (workdir / 'config.json').unlink()
  with pytest.raises(errors.CheckpointMismatch, match='holds a different state') as error:
    train.train_and_evaluate(tiny_config(**{'model.width': 2}), workdir)
  assert isinstance(error.value, errors.RunError) and '\n' not in str(error.value)


def test_init_from_takes_a_trained_run_and_gives_it_a_new_head(tmp_path, reference_run):
  """A 10-class run as the backbone of a 100-class linear probe."""
  config = tiny_config(**{'init_from': str(reference_run), 'finetune_mode': 'linear_probe',
                          'dataset.num_classes': 100, 'num_train_steps': 2})
  train.train_and_evaluate(config, tmp_path)
  params, source = final_params(tmp_path)[1], final_params(reference_run)[1]
  assert params['head']['kernel'].shape == (64, 100)
  assert_trees_equal({k: v for k, v in params.items() if k != 'head'},
                     {k: v for k, v in source.items() if k != 'head'})


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference_run):
  workdir = copy_of(reference_run, tmp_path / 'run', keep_steps={4, 8})
  latest = workdir / 'checkpoints' / '8'
  for path in (latest / 'state').rglob('*'):
    if path.is_file() and path.stat().st_size > 0 and 'ocdbt' in str(path):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  code, output = run_launch(workdir, overrides={**CALM, 'num_train_steps': 8})
  assert code == 0, output
  assert 'Resuming from checkpoint at step 4' in output
  assert final_params(workdir)[0] == 8
  assert list((workdir / 'checkpoints').glob('8.corrupt-*'))  # kept aside, not deleted


def test_a_second_process_is_refused_and_ctrl_c_saves_says_how_to_resume_and_exits(tmp_path):
  """Two processes on one workdir, then Ctrl-C, then the rerun it asks for."""
  long_run = {'num_train_steps': 100000, 'checkpoint_every_steps': 100000}
  first = launch(tmp_path, overrides=long_run, ctrl_c_reaches_python=True)
  wait_for(tmp_path / 'metrics.jsonl')
  code, output = run_launch(tmp_path, overrides=long_run)
  assert code == 1 and first.poll() is None, output
  lines = output.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'error: {tmp_path} is in use by pid {first.pid} on host {socket.gethostname()}'), output

  first.send_signal(signal.SIGINT)
  output, _ = first.communicate(timeout=300)
  assert first.returncode == 130, output  # saved, but not finished: `a && b` stops
  assert 'Ctrl-C: saved checkpoint at step' in output and 'Traceback' not in output, output
  saved = int(output.split('saved checkpoint at step ')[1].split(';')[0])
  assert (tmp_path / 'checkpoints' / str(saved)).exists()
  code, output = run_launch(tmp_path, overrides={**long_run, 'num_train_steps': saved + 2})
  assert code == 0 and f'Resuming from checkpoint at step {saved} ' in output, output
  logged = [r['step'] for r in metrics.read_metrics(tmp_path) if 'train/loss' in r]
  assert logged == sorted(set(logged))  # no step counted twice


def test_two_processes_match_one_process_with_the_same_total_devices(tmp_path, reference_run):
  """jax.distributed on 127.0.0.1 with gloo: 2 processes x 4 devices == 1 process x 8.

  Equal up to float reassociation in the cross-process reductions: 1e-4 absolute after 12
  steps.
  """
  from portpicker import pick_unused_port
  address = f'127.0.0.1:{pick_unused_port()}'
  processes = [launch(tmp_path, devices=4, overrides=CALM, extra=(
      f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'))
               for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  step_one, params_one = final_params(reference_run)
  step_two, params_two = final_params(tmp_path)
  assert step_one == step_two == 12
  assert_trees_equal(params_one, params_two, rtol=1e-4, atol=1e-4)


def test_bad_config_values_get_a_one_line_error_and_nothing_runs(tmp_path):
  for overrides, message in [({'model.depth': 21}, '6n+2'),
                             ({'lr_schedule': 'linear'}, "'step', 'cosine', 'constant'"),
                             ({'dataset.name': 'mnist'}, 'mnist')]:
    code, output = run_launch(tmp_path, overrides=overrides)
    assert code != 0
    assert output.strip().splitlines()[-1].startswith('error: ') and message in output, output
    assert 'Traceback' not in output
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('overrides, message', [
    ({'dataset.normalization': 'gcn'}, "'dataset', 'imagenet', 'pixel_mean', 'zca'"),
    ({'dataset.validation_examples': -10}, 'dataset.validation_examples=-10'),
    ({'dataset.name': 'imagenet2012', 'dataset.validation_examples': 1000},
     'imagenet2012 evaluates on its own validation split'),
    ({'dataset.name': 'imagenet2012', 'dataset.normalization': 'zca'}, "use 'imagenet'"),
    ({'dataset.normalization': 'zca', 'dataset.image_size': 64}, 'use 32 or less'),
    ({'augment.train_crop': 'scale'}, 'augment.train_crop: only for the streamed imagenet2012'),
    ({'augment.eval_crops': 10, 'augment.pca_noise': 0.1},
     'augment.eval_crops, augment.pca_noise: only for'),
    ({'dataset.name': 'imagenet2012', 'augment.eval_crops': 5}, "allowed: 1, 10"),
    ({'dataset.name': 'imagenet2012', 'augment.train_crop': 'scale',
      'augment.scale_range': (480, 256)}, '<= low <= high'),
    ({'augment.pca_noise': -0.1}, 'augment.pca_noise=-0.1 must be >= 0')])
def test_bad_data_and_augment_keys_get_a_one_line_error(overrides, message):
  with pytest.raises(errors.ConfigError) as error:
    schema.validate(tiny_config(**overrides))
  assert '\n' not in str(error.value) and message in str(error.value), str(error.value)


def test_the_done_line_reports_the_final_accuracy_never_the_test_selected_best():
  results = {'model': 'resnet20-A', 'step': 10, 'test_accuracy': 0.81, 'best_test_accuracy': 0.83,
             'train_loss': 0.5, 'wall_s': 61.0, 'img_per_s': 500.0, 'compile_s': 2.0}
  line = train.done_line(results, 10, 'runs/x')
  assert 'test accuracy 81.00%' in line and '83.00%' not in line and 'best' not in line
  assert 'val accuracy 79.00%' in train.done_line({**results, 'val_accuracy': 0.79}, 10, 'runs/x')
