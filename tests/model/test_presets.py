"""Named architectures and the model config: each paper's choices resolved, impossible
combinations refused in one line, and each block option declared once."""

import dataclasses

import pytest

from resnet_jax import errors
from resnet_jax.model import presets, resnet


def test_a_block_option_is_a_model_key_a_block_config_field_and_its_use_in_the_block():
  """Every model key but the net's own (NET_KEYS) is the BlockConfig field of that name, and
  reaches it as given (or resolved from 'auto'); neither ResNet nor ResidualBlock declares
  one again. So a new option takes three places: its key, its field, its use."""
  block_keys = set(presets.default_model_config()) - set(presets.NET_KEYS)
  assert {field.name for field in dataclasses.fields(resnet.BlockConfig)} == block_keys
  for module in (resnet.ResNet, resnet.ResidualBlock):
    assert not block_keys & {field.name for field in dataclasses.fields(module)}, module
  config = presets.default_model_config()
  given = dict(preact=True, dropout_rate=0.25, zero_init_residual=True,
               post_add_activation=False, norm='none', conv_init='fan_in',
               bn_scale_init='uniform', block='basic', shortcut='C', bottleneck_stride='3x3')
  config.update(given)
  block_config = presets.architecture(config)['block_config']
  assert {key: getattr(block_config, key) for key in given} == given


@pytest.mark.parametrize('overrides, expected', [
    # CIFAR: the depth and block alone; option A for basic nets, B for bottlenecks.
    (dict(depth=20), ('basic', 'A', 'first_1x1')),
    (dict(depth=110, preact=True), ('basic', 'A', 'first_1x1')),
    (dict(depth=164, block='bottleneck', preact=True), ('bottleneck', 'B', 'first_1x1')),
    (dict(depth=164, block='bottleneck'), ('bottleneck', 'B', 'first_1x1')),
    (dict(family='wrn', depth=28, width=10, preact=True), ('basic', 'B', 'first_1x1')),
    # ImageNet: the depth picks the block; torchvision's stride on the 3x3.
    (dict(family='imagenet', depth=18), ('basic', 'B', '3x3')),
    (dict(family='imagenet', depth=50, preact=True), ('bottleneck', 'B', '3x3')),
    # Explicit values win.
    (dict(depth=56, shortcut='B'), ('basic', 'B', 'first_1x1')),
    (dict(depth=164, block='bottleneck', shortcut='C', bottleneck_stride='3x3'),
     ('bottleneck', 'C', '3x3')),
    (dict(family='imagenet', depth=50, block='bottleneck', bottleneck_stride='first_1x1'),
     ('bottleneck', 'B', 'first_1x1')),
])
def test_auto_resolves_block_shortcut_and_bottleneck_stride_as_each_paper(overrides,
                                                                          expected):
  config = presets.default_model_config()
  config.update(overrides)
  block = presets.architecture(config)['block_config']
  assert (block.block, block.shortcut, block.bottleneck_stride) == expected


@pytest.mark.parametrize('overrides, message', [
    (dict(depth=21), '6n+2'),
    (dict(depth=165, block='bottleneck'), '9n+2'),
    (dict(family='wrn', depth=27, width=10), '6n+4'),
    (dict(family='wrn', depth=28, width=0), 'integer >= 1'),
    (dict(shortcut='D'), "'auto', 'A', 'B', 'C', 'none'"),
    (dict(block='triple'), "'auto', 'basic', 'bottleneck'"),
    (dict(family='imagenet', depth=42, block='bottleneck'), '18, 34, 50, 101, 152'),
    (dict(family='imagenet', depth=50, block='basic'), "model.block='bottleneck'"),
    (dict(family='imagenet', depth=18, block='bottleneck'), "model.block='basic'"),
    (dict(family='mnist'), "'cifar', 'wrn', 'imagenet'"),
    (dict(bottleneck_stride='1x1'), "'auto', 'first_1x1', '3x3'"),
    (dict(norm='layer'), "'batch', 'none'"),
    (dict(conv_init='xavier'), "'fan_out', 'fan_in'"),
    (dict(bn_scale_init='zeros'), "'ones', 'uniform'"),
    (dict(depth=1001), '9n+2 with model.block=bottleneck'),
    (dict(dropout_rate=1.5), '0 <= rate < 1'),
])
def test_impossible_combinations_get_a_one_line_error_naming_the_allowed_values(overrides,
                                                                                message):
  config = presets.default_model_config()
  config.update(overrides)
  with pytest.raises(errors.ConfigError) as error:
    presets.build_model(config, 10)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_unknown_preset_and_unknown_model_key_are_rejected():
  with pytest.raises(errors.ConfigError, match='known:'):
    presets.preset('resnet21')
  config = presets.default_model_config().to_dict()
  config['dept'] = 20
  with pytest.raises(errors.ConfigError, match='dept'):
    presets.architecture(config)


@pytest.mark.parametrize('name, expected', [
    ('resnet56', 'resnet56-A'), ('plain56', 'plain56'), ('preact_resnet110', 'preact_resnet110-A'),
    ('preact_resnet164', 'preact_resnet164-B'), ('wrn_28_10', 'wrn-28-10'),
    ('resnet50', 'resnet50'), ('wide_resnet50_2', 'wide_resnet50_2'),
])
def test_model_names_say_what_was_built_with_the_resolved_shortcut(name, expected):
  assert presets.model_name(presets.preset(name)) == expected
  config = presets.preset(name)
  config.norm = 'none'
  assert presets.model_name(config) == expected + '-nonorm'
