"""The residual family, as the papers define it (He et al. 2015, 2016; Zagoruyko & Komodakis 2016)."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.model import presets, resnet


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


def _block(planes=16, strides=1, norm_layer=nn.BatchNorm, **options):
  return resnet.ResidualBlock(planes=planes, strides=strides, norm_layer=norm_layer,
                              config=resnet.BlockConfig(**options))


def _randomize_stats(variables, key):
  """Non-trivial BN statistics, so eval-mode checks are not accidentally trivial."""
  stats = flax.traverse_util.flatten_dict(variables.get('batch_stats', {}))
  keys = jax.random.split(key, max(len(stats), 1))
  stats = {k: jax.random.uniform(kk, v.shape, minval=0.5, maxval=1.5) for kk, (k, v) in
           zip(keys, stats.items())}
  return {**variables, 'batch_stats': flax.traverse_util.unflatten_dict(stats)}


ORDERINGS_BLOCKS_NORMS = [(preact, block, norm) for preact in (False, True)
                          for block in ('basic', 'bottleneck') for norm in ('batch', 'none')]


@pytest.mark.parametrize('preact, block, norm', ORDERINGS_BLOCKS_NORMS)
@pytest.mark.parametrize('train', [False, True])
def test_zero_initialised_block_with_an_identity_skip_outputs_its_skip(preact, block, norm,
                                                                       train):
  planes = 16 if block == 'basic' else 4
  layer = _block(planes=planes, block=block, preact=preact, zero_init_residual=True,
                 norm_layer=nn.BatchNorm if norm == 'batch' else None)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
  variables = _randomize_stats(layer.init(jax.random.key(0), x, train=False), jax.random.key(2))
  y, _ = layer.apply(variables, x, train=train, mutable=['batch_stats'])
  skip = x if preact else nn.relu(x)  # post-activation blocks apply ReLU after the addition
  np.testing.assert_array_equal(np.asarray(y), np.asarray(skip))


def _sgd_steps(model, variables, images, labels, steps, learning_rate=0.1):
  """Plain SGD on the cross-entropy, in training mode; returns the final variables."""
  def loss(params, batch_stats):
    logits, state = model.apply({'params': params, **batch_stats}, images, train=True,
                                mutable=list(batch_stats))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

  @jax.jit
  def step(variables):
    params, batch_stats = variables['params'], {k: v for k, v in variables.items()
                                                if k != 'params'}
    grads, state = jax.grad(loss, has_aux=True)(params, batch_stats)
    params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return {'params': params, **state}

  for _ in range(steps):
    variables = step(variables)
  return variables


@pytest.mark.parametrize('preact, block, norm', ORDERINGS_BLOCKS_NORMS)
def test_zero_init_residual_leaves_no_dead_branch(preact, block, norm):
  """At init every block's residual branch outputs zero, so each block outputs its skip;
  yet every parameter of every block moves within 3 SGD steps: the zeroed layer passes
  gradient (zeroing a pre-activation branch's last BN, before its last conv, would not)."""
  config = presets.default_model_config()
  config.update(dict(depth=14 if block == 'basic' else 20, block=block, preact=preact,
                     norm=norm, zero_init_residual=True))
  model = presets.build_model(config, 10)
  images = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  labels = jnp.arange(8) % 10
  before = model.init(jax.random.key(1), images, train=False)
  _, state = model.apply(before, images, train=False, capture_intermediates=True)
  branch_end = ('conv' if preact or norm == 'none' else 'bn') + \
      ('2' if block == 'basic' else '3')
  branch_outputs = {name: float(jnp.abs(captured[branch_end]['__call__'][0]).max())
                    for name, captured in state['intermediates'].items() if '_block' in name}
  assert branch_outputs == {name: 0.0 for name in branch_outputs} and len(branch_outputs) == 6
  after = _sgd_steps(model, before, images, labels, steps=3)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), after['params'],
                       before['params'])
  blocks = {name: leaves for name, leaves in moved.items() if name.startswith('stage')}
  assert len(blocks) == 6
  dead = [f'{name}/{"/".join(path)}' for name, leaves in blocks.items()
          for path, change in flax.traverse_util.flatten_dict(leaves).items() if change == 0]
  assert dead == []


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
  y = resnet.identity_shortcut_a(x, 32, 2)
  assert y.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(np.asarray(y[..., 8:24]), np.asarray(x[:, ::2, ::2, :]))
  assert float(jnp.abs(y[..., :8]).max()) == 0 and float(jnp.abs(y[..., 24:]).max()) == 0


def _conv_output_sizes(layer, x):
  variables = layer.init(jax.random.key(0), x, train=False)
  _, state = layer.apply(variables, x, train=False, capture_intermediates=True)
  return {name: out['__call__'][0].shape[1] for name, out in state['intermediates'].items()
          if name.startswith('conv')}


@pytest.mark.parametrize('bottleneck_stride, sizes', [
    ('first_1x1', {'conv1': 4, 'conv2': 4, 'conv3': 4}),  # He et al.: resnet-pre-act.lua
    ('3x3', {'conv1': 8, 'conv2': 4, 'conv3': 4}),  # fb.resnet.torch, torchvision
])
def test_bottleneck_stride_sits_on_the_first_1x1_or_on_the_3x3(bottleneck_stride, sizes):
  layer = _block(planes=8, block='bottleneck', strides=2, shortcut='B',
                 bottleneck_stride=bottleneck_stride)
  assert _conv_output_sizes(layer, jnp.ones((1, 8, 8, 16))) == sizes


@pytest.mark.parametrize('overrides, size, strided_conv', [
    (dict(depth=11, block='bottleneck', preact=True), 16, 'conv1'),
    (dict(depth=11, block='bottleneck'), 16, 'conv1'),
    (dict(depth=11, block='bottleneck', bottleneck_stride='3x3'), 16, 'conv2'),
    (dict(family='imagenet', depth=50), 64, 'conv2'),
])
def test_cifar_bottleneck_nets_stride_the_first_1x1_and_imagenet_nets_the_3x3(overrides, size,
                                                                              strided_conv):
  config = presets.default_model_config()
  config.update(overrides)
  model = presets.build_model(config, 10)
  x = jnp.ones((1, size, size, 3))
  variables = abstract_variables(model, size)
  _, state = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=True),
                            variables)
  input_size = state['intermediates']['stage1'][0].shape[1]  # stage 2's first block's input
  block = state['intermediates']['stage2_block0']
  first_halved = next(name for name in ('conv1', 'conv2', 'conv3')
                      if block[name]['__call__'][0].shape[1] == input_size // 2)
  assert first_halved == strided_conv


def test_config_files_need_no_block_or_shortcut_for_the_papers_other_depths():
  from configs import preact_cifar, resnet_imagenet  # pylint: disable=import-outside-toplevel
  config = preact_cifar.get_config()
  config.model.depth, config.model.block = 110, 'basic'
  assert presets.model_name(config.model) == 'preact_resnet110-A'
  config = resnet_imagenet.get_config()
  config.model.depth = 18
  assert presets.architecture(config.model)['block_config'].block == 'basic'
  assert num_params(presets.build_model(config.model, 1000), 64) == 11_689_512


def _skips(model, variables, x):
  """Per block: (its input, its pre-activated input relu(bn1(input)), its skip output).

  The skip is the block's output minus its residual branch (the last conv's output).
  """
  _, state = model.apply(variables, x, train=False, capture_intermediates=True)
  captured = state['intermediates']
  names = sorted((n for n in captured if '_block' in n),
                 key=lambda n: (int(n[5]), int(n.rsplit('block', 1)[1])))
  inputs = [captured['stem'][0]] + [captured[n]['__call__'][0] for n in names[:-1]]
  result = {}
  for name, block_input in zip(names, inputs):
    block = captured[name]
    last_conv = max(k for k in block if k.startswith('conv'))
    skip = block['__call__'][0] - block[last_conv]['__call__'][0]
    preactivated = nn.relu(block['bn1']['__call__'][0]) if 'bn1' in block else None
    result[name] = (block_input, preactivated, skip)
  return result


def test_pre_activation_is_shared_with_the_skip_in_the_first_block_of_each_stage():
  """fb.resnet.torch preresnet.lua: 'both_preact' first blocks, raw identity elsewhere."""
  config = presets.preset('preact_resnet110')
  config.depth = 14  # option A, two blocks per stage
  model = presets.build_model(config, 10)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = _randomize_stats(model.init(jax.random.key(1), x, train=False), jax.random.key(2))
  skips = _skips(model, variables, x)
  for stage, channels in ((1, 16), (2, 32), (3, 64)):
    _, preactivated, skip = skips[f'stage{stage}_block0']
    expected = resnet.identity_shortcut_a(preactivated, channels, 1 if stage == 1 else 2)
    np.testing.assert_allclose(np.asarray(skip), np.asarray(expected), atol=1e-5)
    block_input, _, skip = skips[f'stage{stage}_block1']
    np.testing.assert_allclose(np.asarray(skip), np.asarray(block_input), atol=1e-5)


@pytest.mark.parametrize('width, stage1_shared', [(1, False), (2, True)])
def test_wide_resnets_share_the_pre_activation_only_where_the_shape_changes(width,
                                                                            stage1_shared):
  """models/wide-resnet.lua, line 51: WRN-d-1's first block (16 -> 16) keeps a raw skip."""
  config = presets.preset('wrn_16_4')
  config.update(dict(depth=10, width=width))
  model = presets.build_model(config, 10)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = _randomize_stats(model.init(jax.random.key(1), x, train=False), jax.random.key(2))
  block_input, preactivated, skip = _skips(model, variables, x)['stage1_block0']
  if stage1_shared:  # a 1x1 projection of the pre-activated input
    kernel = variables['params']['stage1_block0']['shortcut_conv']['kernel'][0, 0]
    np.testing.assert_allclose(np.asarray(skip), np.asarray(preactivated @ kernel), atol=1e-5)
  else:
    np.testing.assert_allclose(np.asarray(skip), np.asarray(block_input), atol=1e-5)
    assert not np.allclose(np.asarray(skip), np.asarray(preactivated), atol=1e-3)


def test_pre_activation_imagenet_net_takes_the_stems_bn_relu_as_stage1s_pre_activation():
  """fb.resnet.torch preresnet.lua: stem conv-BN-ReLU-maxpool, then a 'no_preact' block."""
  config = presets.preset('resnet18')
  config.preact = True
  model = presets.build_model(config, 10)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = _randomize_stats(model.init(jax.random.key(1), x, train=False), jax.random.key(2))
  params = variables['params']
  assert 'bn1' not in params['stage1_block0'] and 'bn1' in params['stage1_block1']
  assert all('bn1' in params[f'stage{s}_block0'] for s in (2, 3, 4))
  stem_output, _, skip = _skips(model, variables, x)['stage1_block0']  # BN-ReLU, max-pool
  np.testing.assert_allclose(np.asarray(skip), np.asarray(stem_output), atol=1e-5)


@pytest.mark.parametrize('name, torchvision_count, post_act_block_bn, pre_act_bn', [
    # Post-activation BN channels in the blocks: bn1, bn2 (bn3) after each conv, plus the
    # projections' BN. Pre-activation: bn1 on each block's input, except stage 1's first
    # block, bn2 (bn3) on the inner width, no BN on projections, a final BN.
    ('resnet18', 11_689_512, 2 * 2 * (64 + 128 + 256 + 512) + (128 + 256 + 512),
     (64 * 3) + (64 + 128 * 3) + (128 + 256 * 3) + (256 + 512 * 3) + 512),
    ('resnet50', 25_557_032, 6 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512) + (256 + 512 + 1024 +
                                                                           2048),
     (2 * 256 + 3 * 2 * 64) + (256 + 3 * 512 + 4 * 2 * 128) + (512 + 5 * 1024 + 6 * 2 * 256) +
     (1024 + 2 * 2048 + 3 * 2 * 512) + 2048),
])
def test_pre_activation_imagenet_parameter_count_has_no_second_bn_after_the_stem(
    name, torchvision_count, post_act_block_bn, pre_act_bn):
  model = build(name, 1000, preact=True)
  expected = torchvision_count - 2 * post_act_block_bn + 2 * pre_act_bn  # scale and bias
  assert num_params(model, 64) == expected


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


def _init_params(name, size=32, num_classes=10, **overrides):
  model = build(name, num_classes, **overrides)
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)['params']


@pytest.mark.parametrize('name, fan_in', [('resnet20', 64), ('wrn_16_4', 256),
                                          ('resnet18', 512)])
def test_classifier_weight_is_torchs_linear_default_and_its_bias_zero(name, fan_in):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch/nn Linear.lua), bias zeroed as fb.resnet.torch
  and the WRN code do; Flax's lecun_normal would have std 1/sqrt(fan_in)."""
  head = _init_params(name, num_classes=100)['head']
  bound = 1 / np.sqrt(fan_in)
  assert head['kernel'].shape == (fan_in, 100)
  assert float(jnp.abs(head['kernel']).max()) <= bound
  assert float(jnp.std(head['kernel'])) == pytest.approx(bound / np.sqrt(3), rel=0.05)
  np.testing.assert_array_equal(np.asarray(head['bias']), 0)


@pytest.mark.parametrize('name, fan', [
    ('wrn_16_4', 'fan_in'),  # the WRN code since ea02518 "fix MSRA init"
    ('resnet20', 'fan_out'),  # fb.resnet.torch, torchvision
])
def test_conv_init_is_he_normal_with_the_references_fan(name, fan):
  kernel = _init_params(name)['stage2_block0']['conv1']['kernel']  # 3x3, C_in != C_out
  height, width, in_channels, out_channels = kernel.shape
  assert in_channels != out_channels
  fans = {'fan_in': height * width * in_channels, 'fan_out': height * width * out_channels}
  assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2 / fans[fan]), rel=0.05)


def _bn_scales(params):
  return {path: leaf for path, leaf in flax.traverse_util.flatten_dict(params).items()
          if path[-1] == 'scale'}


def test_wide_resnet_bn_scales_start_uniform_in_0_1_as_torchs_default():
  scales = np.concatenate([np.asarray(v) for v in _bn_scales(_init_params('wrn_16_4')).values()])
  assert scales.min() >= 0 and scales.max() < 1
  assert scales.mean() == pytest.approx(0.5, abs=0.05)
  ones = _bn_scales(_init_params('resnet20'))
  assert all(np.all(np.asarray(v) == 1) for v in ones.values())


def test_zero_init_residual_still_zeroes_the_last_conv_of_a_wide_resnet():
  params = _init_params('wrn_16_4', zero_init_residual=True)
  blocks = [name for name in params if name.startswith('stage')]
  assert len(blocks) == 6
  assert all(float(jnp.abs(params[b]['conv2']['kernel']).max()) == 0 for b in blocks)
  assert all(float(jnp.abs(params[b]['conv1']['kernel']).max()) > 0 for b in blocks)
  assert float(np.asarray(params['final_bn']['scale']).max()) < 1  # still U(0, 1)


def test_a_net_without_normalisation_has_no_batch_stats_and_trains():
  model = build('resnet20', norm='none')
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  labels = jnp.arange(8) % 10
  variables = model.init(jax.random.key(1), images, train=False)
  assert set(variables) == {'params'}
  params = variables['params']
  assert not [path for path in flax.traverse_util.flatten_dict(params) if 'bn' in path[-2]]
  # Every conv has a bias, zero at initialisation.
  assert float(jnp.abs(params['stage2_block0']['conv1']['bias']).max()) == 0
  assert 'bias' in params['stem_conv']
  # 269,722 with BN, minus 688 BN channels (scale and bias), plus 688 conv biases.
  assert num_params(model) == 269_722 - 2 * 688 + 688
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({'params': p}, images, train=True), labels).mean()
  # Without BN the residual sums grow with depth (here logits 5x a BN net's), so a small step.
  after = _sgd_steps(model, variables, images, labels, steps=1, learning_rate=1e-3)
  assert float(loss(after['params'])) < float(loss(params))


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
