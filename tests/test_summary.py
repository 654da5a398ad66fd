"""`--mode=summary`: per-stage table, parameters and FLOPs, honouring overrides, in seconds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax import schema, summary
from resnet_jax.model import presets

ROOT = Path(__file__).resolve().parents[1]


def summarize(preset, dataset='cifar10', image_size=32):
  config = schema.default_config()
  config.model = presets.preset(preset)
  config.dataset.name, config.dataset.image_size = dataset, image_size
  return summary.summarize(config)


@pytest.mark.parametrize('preset, dataset, size, giga_macs, rel', [
    # torchvision's published GFLOPS (multiply-adds) for its ImageNet models.
    ('resnet18', 'imagenet2012', 224, 1.81, 0.01), ('resnet50', 'imagenet2012', 224, 4.09, 0.01),
    ('wide_resnet50_2', 'imagenet2012', 224, 11.40, 0.01),
    # WRN-28-10: 5.25 G (commonly quoted); ResNet-20: "about 41 M".
    ('wrn_28_10', 'cifar10', 32, 5.25, 0.01), ('resnet20', 'cifar10', 32, 0.041, 0.02),
])
def test_multiply_adds_match_the_published_counts(preset, dataset, size, giga_macs, rel):
  result = summarize(preset, dataset, size)
  assert result['macs_per_example'] / 1e9 == pytest.approx(giga_macs, rel=rel)
  # XLA skips multiply-adds on zero padding, so its count is a little lower.
  assert 0.8 * 2 * result['macs_per_example'] < result['flops_per_example'] \
      <= 2 * result['macs_per_example']


def test_scanned_or_recomputed_blocks_count_the_same_parameters_and_flops():
  plain = summarize('resnet56')
  for layout in ({'scan_blocks': True}, {'remat_blocks': True}):
    config = schema.default_config()
    config.model = presets.preset('resnet56')
    config.model.update(layout)
    changed = summary.summarize(config)
    assert [changed[k] for k in ('params', 'flops_per_example', 'macs_per_example')] == [
        plain[k] for k in ('params', 'flops_per_example', 'macs_per_example')]


def test_the_table_lists_stem_stages_and_logits_in_order_with_their_parameters():
  result = summarize('resnet20')
  assert [name for name, _, _ in result['stages']] == ['stem', 'stage1', 'stage2', 'stage3',
                                                       'logits']
  assert sum(params for _, _, params in result['stages']) == result['params'] == 269_722


def test_a_net_without_normalisation_is_summarised_with_its_conv_biases():
  config = schema.default_config()
  config.model = presets.preset('resnet20')
  config.model.norm = 'none'
  result = summary.summarize(config)
  assert result['model'] == 'resnet20-A-nonorm'
  # 269,722 less 688 BN channels (scale and bias) plus 688 conv biases.
  assert sum(params for _, _, params in result['stages']) == result['params'] == 269_034
  assert result['macs_per_example'] == summarize('resnet20')['macs_per_example']


def test_summary_mode_honours_overrides_and_ends_with_one_json_line():
  output = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/wrn.py', '--mode=summary',
       '--config.model.depth=40', '--config.model.width=4'],
      cwd=ROOT, capture_output=True, text=True, check=True, timeout=300).stdout
  lines = output.strip().splitlines()
  assert any(line.startswith('stage3') for line in lines)
  last = json.loads(lines[-1])
  assert last['model'] == 'wrn-40-4' and last['params'] == 8_949_210
  assert last['flops_per_example'] > 0
