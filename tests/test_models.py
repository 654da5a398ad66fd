"""The residual family, as the papers define it (He et al. 2015, 2016; Zagoruyko & Komodakis 2016)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models, presets


def build(name, num_classes=10, **overrides):
  config = presets.preset(name)
  config.update(overrides)
  return presets.build_model(config, num_classes)


def abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                           train=False))


def num_params(model, size=32):
  return sum(x.size for x in jax.tree.leaves(abstract_variables(model, size)['params']))


def stage_shapes(model, size):
  variables = abstract_variables(model, size)
  _, state = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3)), train=False,
                                                  mutable=['intermediates']), variables)
  return {name: value[0].shape[1:] for name, value in state['intermediates'].items()}


@pytest.mark.parametrize('name, num_classes, overrides, expected', [
    ('resnet20', 10, {}, 269_722),
    ('resnet56', 10, {}, 853_018),
    ('resnet56', 10, {'shortcut': 'B'}, 855_770),
    ('resnet110', 10, {}, 1_727_962),
    ('wrn_28_10', 10, {}, 36_479_194),
    ('wrn_28_10', 100, {}, 36_536_884),
    ('resnet18', 1000, {}, 11_689_512),
    ('resnet50', 1000, {}, 25_557_032),
    ('wide_resnet50_2', 1000, {}, 68_883_240),
    # torchvision's counts for the remaining ImageNet models.
    ('resnet34', 1000, {}, 21_797_672),
    ('resnet101', 1000, {}, 44_549_160),
    ('resnet152', 1000, {}, 60_192_808),
    ('wide_resnet101_2', 1000, {}, 126_886_696),
])
def test_parameter_counts_match_papers_and_torchvision_exactly(name, num_classes, overrides,
                                                               expected):
  size = 224 if name.startswith(('resnet1', 'resnet3', 'resnet5', 'wide')) and \
      name not in ('resnet110',) else 32
  assert num_params(build(name, num_classes, **overrides), size) == expected


@pytest.mark.parametrize('name, millions', [
    # He et al. 2015, Table 6.
    ('resnet32', 0.46), ('resnet44', 0.66), ('resnet1202', 19.4),
    # He et al. 2016, Tables 2-3.
    ('preact_resnet110', 1.7), ('preact_resnet164', 1.7), ('preact_resnet1001', 10.2),
    # Zagoruyko & Komodakis 2016, Tables 4-5.
    ('wrn_16_4', 2.7), ('wrn_40_4', 8.9), ('wrn_16_8', 11.0), ('wrn_22_8', 17.2),
])
def test_other_depths_and_widths_match_the_papers_rounded_counts(name, millions):
  assert num_params(build(name)) / 1e6 == pytest.approx(millions, rel=0.02)


def test_output_shape_per_stage():
  assert stage_shapes(build('resnet20'), 32) == {
      'stem': (32, 32, 16), 'stage1': (32, 32, 16), 'stage2': (16, 16, 32),
      'stage3': (8, 8, 64), 'logits': (10,)}
  assert stage_shapes(build('wrn_28_10'), 32) == {
      'stem': (32, 32, 16), 'stage1': (32, 32, 160), 'stage2': (16, 16, 320),
      'stage3': (8, 8, 640), 'logits': (10,)}
  assert stage_shapes(build('resnet50', 1000), 224) == {
      'stem': (56, 56, 64), 'stage1': (56, 56, 256), 'stage2': (28, 28, 512),
      'stage3': (14, 14, 1024), 'stage4': (7, 7, 2048), 'logits': (1000,)}


def test_option_a_adds_no_parameters_and_the_plain_twin_has_the_same_parameters():
  counts = {s: num_params(build('resnet56', shortcut=s)) for s in ('A', 'B', 'C', 'none')}
  assert counts['A'] == counts['none']
  assert counts['A'] < counts['B'] < counts['C']


def _shortcut_convs(model):
  params = abstract_variables(model, 32)['params']
  return sorted(name for name, block in params.items() if 'shortcut_conv' in block)


def test_option_b_projects_only_where_the_shape_changes_and_c_on_every_block():
  assert _shortcut_convs(build('resnet56', shortcut='B')) == ['stage2_block0', 'stage3_block0']
  assert len(_shortcut_convs(build('resnet56', shortcut='C'))) == 27
  assert _shortcut_convs(build('resnet56', shortcut='A')) == []


def _block(**kwargs):
  defaults = dict(planes=16, block='basic', strides=1, shortcut='A')
  return models.ResidualBlock(**{**defaults, **kwargs})


def _randomize_stats(variables, key):
  """Non-trivial BN statistics, so eval-mode checks are not accidentally trivial."""
  stats = flax.traverse_util.flatten_dict(variables.get('batch_stats', {}))
  keys = jax.random.split(key, max(len(stats), 1))
  stats = {k: jax.random.uniform(kk, v.shape, minval=0.5, maxval=1.5) for kk, (k, v) in
           zip(keys, stats.items())}
  return {**variables, 'batch_stats': flax.traverse_util.unflatten_dict(stats)}


@pytest.mark.parametrize('preact', [False, True])
@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
@pytest.mark.parametrize('train', [False, True])
def test_zero_initialised_block_without_post_add_activation_is_the_identity(preact, block,
                                                                            train):
  planes = 16 if block == 'basic' else 4
  layer = _block(planes=planes, block=block, preact=preact, zero_init_residual=True,
                 post_add_activation=False)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
  variables = _randomize_stats(layer.init(jax.random.key(0), x, train=False), jax.random.key(2))
  y, _ = layer.apply(variables, x, train=train, mutable=['batch_stats'])
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
def test_pre_activation_skip_path_is_a_pure_identity(block):
  """out = x + F(x): removing the skip (shortcut 'none', same weights) leaves exactly F(x)."""
  planes = 16 if block == 'basic' else 4
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
  residual = _block(planes=planes, block=block, preact=True, shortcut='A')
  plain = _block(planes=planes, block=block, preact=True, shortcut='none')
  variables = _randomize_stats(residual.init(jax.random.key(0), x, train=False),
                               jax.random.key(2))
  out = residual.apply(variables, x, train=False)
  branch = plain.apply(variables, x, train=False)
  np.testing.assert_allclose(np.asarray(out - branch), np.asarray(x), atol=1e-5)
  assert float(jnp.min(out)) < 0  # no ReLU after the addition


def test_post_activation_block_applies_relu_after_the_addition_unless_disabled():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
  layer = _block()
  variables = layer.init(jax.random.key(0), x, train=False)
  assert float(jnp.min(layer.apply(variables, x, train=False))) >= 0
  no_relu = _block(post_add_activation=False)
  assert float(jnp.min(no_relu.apply(variables, x, train=False))) < 0


def test_option_a_subsamples_and_zero_pads_channels():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  y = models.identity_shortcut_a(x, 32, 2)
  assert y.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(np.asarray(y[..., 8:24]), np.asarray(x[:, ::2, ::2, :]))
  assert float(jnp.abs(y[..., :8]).max()) == 0 and float(jnp.abs(y[..., 24:]).max()) == 0


@pytest.mark.parametrize('on_first_1x1, strided_conv', [(False, 'conv2'), (True, 'conv1')])
def test_bottleneck_stride_sits_on_the_3x3_or_optionally_on_the_first_1x1(on_first_1x1,
                                                                          strided_conv):
  layer = _block(planes=8, block='bottleneck', strides=2, shortcut='B',
                 stride_on_first_1x1=on_first_1x1)
  x = jnp.ones((1, 8, 8, 16))
  variables = layer.init(jax.random.key(0), x, train=False)
  _, state = layer.apply(variables, x, train=False, capture_intermediates=True)
  sizes = {name: out['__call__'][0].shape[1] for name, out in state['intermediates'].items()
           if name.startswith('conv')}
  assert sizes[strided_conv] == 4
  assert sizes['conv1'] == (4 if on_first_1x1 else 8)


def test_dropout_runs_only_in_training():
  model = build('wrn_16_4', dropout_rate=0.3)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)

  def train_logits(seed):
    logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(seed)})
    return np.asarray(logits)
  assert not np.allclose(train_logits(0), train_logits(1))
  no_dropout = build('wrn_16_4')
  np.testing.assert_array_equal(np.asarray(model.apply(variables, x, train=False)),
                                np.asarray(no_dropout.apply(variables, x, train=False)))


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
  config = presets.preset('resnet20')
  model = presets.build_model(config, 10, half_precision=True)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  (logits, state) = model.apply(variables, x, train=True, mutable=['batch_stats',
                                                                   'intermediates'])
  assert logits.dtype == jnp.float32
  assert state['intermediates']['stage1'][0].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state['batch_stats'])} == {jnp.dtype('float32')}


@pytest.mark.parametrize('overrides, message', [
    (dict(depth=21), '6n+2'),
    (dict(depth=165, block='bottleneck'), '9n+2'),
    (dict(family='wrn', depth=27, width=10), '6n+4'),
    (dict(family='wrn', depth=28, width=0), 'integer >= 1'),
    (dict(shortcut='D'), "'A', 'B', 'C', 'none'"),
    (dict(block='triple'), "'basic', 'bottleneck'"),
    (dict(family='imagenet', depth=42, block='bottleneck'), '18, 34, 50, 101, 152'),
    (dict(family='imagenet', depth=50, block='basic'), "model.block='bottleneck'"),
    (dict(family='mnist'), "'cifar', 'wrn', 'imagenet'"),
    (dict(dropout_rate=1.5), '0 <= rate < 1'),
])
def test_impossible_combinations_get_a_one_line_error_naming_the_allowed_values(overrides,
                                                                                message):
  config = presets.default_model_config()
  config.update(overrides)
  with pytest.raises(presets.ConfigError) as error:
    presets.build_model(config, 10)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_unknown_preset_and_unknown_model_key_are_rejected():
  with pytest.raises(presets.ConfigError, match='known:'):
    presets.preset('resnet21')
  config = presets.default_model_config().to_dict()
  config['dept'] = 20
  with pytest.raises(presets.ConfigError, match='dept'):
    presets.architecture(config)


@pytest.mark.parametrize('name, expected', [
    ('resnet56', 'resnet56-A'), ('plain56', 'plain56'), ('preact_resnet164', 'preact_resnet164-B'),
    ('wrn_28_10', 'wrn-28-10'), ('resnet50', 'resnet50'), ('wide_resnet50_2', 'wide_resnet50_2'),
])
def test_model_names_say_what_was_built(name, expected):
  assert presets.model_name(presets.preset(name)) == expected
