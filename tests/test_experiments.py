"""The ablation experiments: every variant expands to valid points, every analysis draws its
figures and tables, and one quick experiment runs end to end through the sweep runner."""

import json
from pathlib import Path

import numpy as np
import pytest

from resnet_jax.sweeps import execute, spec
from resnet_jax.model import presets
from resnet_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(__file__).resolve().parents[2] / 'shared/data/cifar10-jpg.tar.gz'
NAMES = ('degradation', 'shortcuts', 'preact', 'wrn_width', 'gradient_flow', 'identity')
TRAINED = ('degradation', 'shortcuts', 'preact', 'wrn_width', 'identity')


def experiment(name):
  return spec.load_module(ROOT / 'experiments' / f'{name}.py')


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
  monkeypatch.setenv('RESNET_JAX_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('arg', [None, 'quick', 'quick,seeds=2', 'cpu', 'cpu,seeds=3'])
def test_every_variant_expands_to_valid_points(name, arg, tmp_path):
  module = experiment(name)
  runs = spec.expand(module.get_config(arg), module.get_sweep(arg), tmp_path)
  assert len({run.name for run in runs}) == len(runs) >= 2
  if arg and 'seeds=2' in arg:
    assert {run.overrides['seed'] for run in runs} == {0, 1}
  if arg and 'seeds=3' in arg:
    assert {run.overrides['seed'] for run in runs} == {0, 1, 2}


@pytest.mark.parametrize('name', NAMES)
def test_cpu_variants_train_on_real_cifar_10_with_two_seeds_and_say_what_they_measured(name):
  module = experiment(name)
  config = module.get_config('cpu')
  assert config.dataset.max_train_examples == -1 or config.dataset.max_train_examples >= 20_000
  assert {point['seed'] for point in module.get_sweep('cpu')} == {0, 1}
  assert ':cpu' in module.__doc__


@pytest.mark.parametrize('name', ['degradation', 'identity', 'wrn_width', 'preact', 'shortcuts'])
def test_cpu_training_runs_warm_up_over_their_first_150_steps(name):
  from resnet_jax import optim
  config = experiment(name).get_config('cpu')
  examples = config.dataset.max_train_examples if config.dataset.max_train_examples > 0 else 50_000
  steps_per_epoch = examples // config.batch_size
  total = int(config.num_epochs * steps_per_epoch)
  schedule = optim.lr_multiplier(config, steps_per_epoch, total)
  assert float(schedule(0)) < 0.01 and float(schedule(75)) == pytest.approx(0.5, abs=0.02)
  assert float(schedule(150)) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize('name', NAMES)
def test_quick_variants_are_cpu_sized_and_documented(name):
  module = experiment(name)
  quick = module.get_config('quick')
  assert 0 < quick.dataset.max_train_examples <= 5000
  assert len(module.get_sweep('quick')) <= 8
  for section in ('Command:', 'Expected:', 'Time:', ':quick'):
    assert section in module.__doc__, section


def test_the_default_variants_follow_the_papers():
  degradation = experiment('degradation')
  points = degradation.get_sweep()
  assert sorted({p['model.depth'] for p in points}) == [20, 32, 44, 56, 110]
  assert degradation.get_config().num_train_steps == 64_000
  assert {(p['model.depth'], p['model.block']) for p in experiment('preact').get_sweep()} == {
      (110, 'basic'), (164, 'bottleneck')}
  widths = experiment('wrn_width').get_sweep()
  assert len(widths) == 20 and {p['model.depth'] for p in widths} == {16, 22, 28, 40}


def test_an_unknown_experiment_argument_is_one_clear_line():
  with pytest.raises(ConfigError, match=r"unknown config variant\(s\) \['quik'\]"):
    experiment('degradation').get_config('quik')
  with pytest.raises(ConfigError, match="'quick' and 'cpu', not both"):
    experiment('degradation').get_config('quick,cpu')


# ----------------------------------------------------------------------------- analyses


def fake_results(runs, rng):
  """results.json, metrics.jsonl and config.json as a finished run writes them, with
  made-up numbers."""
  from resnet_jax import metrics
  for run in runs:
    run.workdir.mkdir(parents=True)
    metrics.write_config_record(run.workdir, run.config)
    error = float(rng.uniform(0.05, 0.5))
    (run.workdir / 'results.json').write_text(json.dumps({
        'model': presets.model_name(run.config.model), 'step': 100, 'test_error': error,
        'test_accuracy': 1 - error, 'best_test_error': error, 'train_error': error / 2,
        'test_loss': 1.0, 'train_loss': 0.5, 'wall_s': 60.0, 'img_per_s': 500.0}))
    lines = [{'step': s, 'train/accuracy': s / 200, 'epoch': s / 50} for s in (20, 60, 100)]
    lines.append({'step': 100, 'eval/accuracy': 1 - error, 'eval/loss': 1.0, 'epoch': 2.0})
    (run.workdir / 'metrics.jsonl').write_text('\n'.join(json.dumps(l) for l in lines) + '\n')


@pytest.mark.parametrize('name', ('degradation', 'shortcuts', 'preact', 'wrn_width'))
def test_each_analysis_draws_its_figures_and_table(name, tmp_path):
  module = experiment(name)
  runs = spec.expand(module.get_config('quick,seeds=2'), module.get_sweep('quick,seeds=2'),
                      tmp_path)
  fake_results(runs, np.random.default_rng(0))
  section = module.analyze(tmp_path, runs)
  assert section.startswith('## ') and '|---|' in section and ' ± ' in section
  for figure in [line[line.index('(') + 1:-1] for line in section.splitlines()
                 if line.startswith('![')]:
    assert (tmp_path / figure).stat().st_size > 10_000, figure


def test_identity_measures_every_3x3_layer_after_its_bn_as_in_fig_7(tmp_path):
  """The stem and each block's 3x3 convolutions, in order: their BN output (post-activation)
  or, where the BN comes before the convolution (pre-activation), the convolution's output."""
  import jax
  identity = experiment('identity')
  expected = {
      ('A', False, 'basic'): ['stem_bn', 'stage1_block0/bn1', 'stage1_block0/bn2',
                              'stage2_block0/bn1', 'stage2_block0/bn2', 'stage3_block0/bn1',
                              'stage3_block0/bn2'],
      ('none', False, 'basic'): None,  # the plain twin reads the same layers
      ('B', True, 'basic'): ['stem_conv', 'stage1_block0/conv1', 'stage1_block0/conv2',
                             'stage2_block0/conv1', 'stage2_block0/conv2',
                             'stage3_block0/conv1', 'stage3_block0/conv2'],
      ('B', False, 'bottleneck'): ['stem_bn', 'stage1_block0/bn2', 'stage2_block0/bn2',
                                   'stage3_block0/bn2'],
  }
  for (shortcut, preact, block), layers in expected.items():
    config = identity.get_config('quick')
    config.model.depth = 11 if block == 'bottleneck' else 8
    config.model.shortcut, config.model.preact, config.model.block = shortcut, preact, block
    model = presets.build_model(config.model, 10)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), images, train=False)
    rows = identity.layer_responses(config, variables, images, 10)
    assert [row['layer'] for row in rows] == (layers or expected[('A', False, 'basic')])
    assert all(row['std'] > 0 for row in rows)


def test_identity_sweeps_the_nets_of_fig_7():
  points = experiment('identity').get_sweep()
  assert [(p['model.shortcut'], p['model.depth']) for p in points] == [
      ('none', 20), ('none', 56), ('A', 20), ('A', 56), ('A', 110)]
  cpu_points = experiment('identity').get_sweep('cpu')
  assert {(p['model.shortcut'], p['model.depth']) for p in cpu_points} == {
      ('none', 20), ('none', 56), ('A', 20), ('A', 56)}


@pytest.mark.parametrize('name', ['identity', 'gradient_flow'])
def test_per_block_measurements_refuse_scanned_stages_in_one_line(name):
  config = experiment(name).get_config('quick')
  config.model.scan_blocks = True
  with pytest.raises(ConfigError, match='scan_blocks=false'):
    if name == 'identity':
      experiment(name).layer_responses(config, {}, None, 10)
    else:
      experiment(name).common.block_names(config.model, name)  # as run_point reads them


# ----------------------------------------------------------------------------- end to end


def test_gradient_flow_quick_runs_end_to_end(tmp_path):
  """The quick variant's eight points (norm x shortcut x depth) on a tiny image folder:
  gradients, CSV, report, figures."""
  from tiny_datasets import write_image_folder  # pylint: disable=g-import-not-at-top
  data = write_image_folder(tmp_path / 'data', per_class=4, test_per_class=1)
  module = experiment('gradient_flow')
  config = spec.apply_overrides(module.get_config('quick'), {
      'dataset.name': 'folder', 'dataset.path': str(data), 'dataset.max_train_examples': 40,
      'batch_size': 8})
  rows = execute.main(config, str(ROOT / 'experiments/gradient_flow.py:quick'), tmp_path / 'w')
  assert [row['status'] for row in rows] == ['done'] * 8
  assert {(row['model.norm'], row['model.depth']) for row in rows} == {
      (norm, depth) for norm in module.NORMS for depth in module.DEPTHS['quick']}
  for row in rows:
    gradients = json.loads((tmp_path / 'w' / row['name'] / 'gradients.json').read_text())
    steps = [r['step'] for r in gradients['records']]
    assert steps == [0, 1, 2] or gradients['records'][-1]['loss'] is None  # or diverged
    assert len(gradients['records'][0]['block_grad_norm']) == (row['model.depth'] - 2) // 2
  report = (tmp_path / 'w' / 'report.md').read_text()
  assert '## Gradient flow' in report and 'without normalisation' in report
  for figure in ('gradient_flow_init.png', 'gradient_flow_steps.png'):
    assert (tmp_path / 'w' / figure).exists()


def test_gradient_flow_gives_every_point_the_same_schedule():
  """Depth must not be confounded with the lr: no warm-up at 110 layers, a constant lr."""
  from resnet_jax import optim
  module = experiment('gradient_flow')
  for arg in (None, 'cpu', 'quick'):
    config = module.get_config(arg)
    lrs = set()
    for point in module.get_sweep(arg):
      point_config = spec.apply_overrides(config, point)
      multiplier = optim.lr_multiplier(point_config, 390, point_config.num_train_steps)
      lrs.add(tuple(round(float(multiplier(step)), 6) for step in (0, 1, 399, 400)))
    assert lrs == {(1.0, 1.0, 1.0, 1.0)}


@pytest.mark.skipif(not CIFAR.exists(), reason=f'real CIFAR-10 not found at {CIFAR}')
def test_at_initialisation_residual_nets_spread_gradients_more_evenly_than_plain_ones(
    tmp_path, monkeypatch):
  """He et al. 2016, Eq. 5: identity skips carry the deep gradient to every block."""
  monkeypatch.delenv('RESNET_JAX_CACHE')  # the decoded copy in the user's cache, if any
  module = experiment('gradient_flow')
  config = module.get_config('quick')
  config = spec.apply_overrides(config, {'dataset.path': str(CIFAR), 'num_train_steps': 0,
                                          'model.depth': 20})
  ratios = {}
  for shortcut in ('none', 'A'):
    point = spec.apply_overrides(config, {'model.shortcut': shortcut})
    ratios[shortcut] = module.run_point(point, tmp_path / shortcut)['block_grad_ratio_at_init']
  assert ratios['A'] < ratios['none']
