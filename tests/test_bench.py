"""`launch.py --mode=bench`: the real train step, timed on synthetic data, one JSON line last."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax import bench, errors, schema
from resnet_jax.model import presets

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {'img_per_s', 'step_time_s', 'compile_s', 'peak_memory_bytes', 'flops_per_step',
                 'mfu', 'device'}


def run_bench(tmp_path, *overrides, devices=2):
  command = [sys.executable, str(ROOT / 'launch.py'), f'--config={ROOT}/configs/resnet_cifar.py:quick',
             '--mode=bench', '--config.model.depth=8', '--config.batch_size=16',
             '--config.bench_steps=2', '--config.bench_warmup_steps=1', *overrides]
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'JAX_PLATFORMS': 'cpu', 'RESNET_JAX_CACHE': str(tmp_path / 'cache')}
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout.strip().splitlines()


def test_bench_mode_prints_a_report_and_ends_with_one_json_line(tmp_path):
  lines = run_bench(tmp_path)
  result = json.loads(lines[-1])
  assert REQUIRED_KEYS <= result.keys()
  assert 0 < result['mfu'] < 1
  assert result['img_per_s'] > 0 and result['step_time_s'] > 0 and result['compile_s'] > 0
  assert result['peak_memory_bytes'] > 0 and result['flops_per_step'] > 0
  assert (result['model'], result['batch_size'], result['devices']) == ('resnet8-A', 16, 2)
  assert result['timed_steps'] == 2 and result['warmup_steps'] == 1
  assert 'measured in this run on the CPU' in result['peak_flops_source']
  report = '\n'.join(lines[:-1])
  for word in ('img/s', 'compile', 'memory', 'GFLOP per step', 'MFU'):
    assert word in report


def test_bench_flops_are_the_whole_step_on_any_device_count(tmp_path):
  """Under shard_map XLA counts one device's share; the report multiplies it back."""
  one = json.loads(run_bench(tmp_path, devices=1)[-1])
  two = json.loads(run_bench(tmp_path, devices=2)[-1])
  assert two['flops_per_step'] == pytest.approx(one['flops_per_step'], rel=0.02)


def test_bench_flops_count_a_scanned_net_unrolled(tmp_path):
  """XLA counts a loop body once; the model's FLOPs must not shrink when its stages scan."""
  unrolled = json.loads(run_bench(tmp_path, '--config.model.depth=20', devices=1)[-1])
  scanned = json.loads(run_bench(tmp_path, '--config.model.depth=20',
                                 '--config.model.scan_blocks=true', devices=1)[-1])
  assert scanned['flops_per_step'] == pytest.approx(unrolled['flops_per_step'], rel=0.01)
  assert scanned['executed_flops_per_step'] < unrolled['executed_flops_per_step']


def test_number_of_classes_comes_from_the_dataset_name_without_loading_it():
  config = schema.default_config()
  for name, classes in (('cifar10', 10), ('cifar100', 100), ('svhn_cropped', 10),
                        ('imagenet2012', 1000)):
    config.dataset.name = name
    assert bench.num_classes(config.dataset) == classes
  config.dataset.name, config.dataset.num_classes = 'synthetic', 37
  assert bench.num_classes(config.dataset) == 37
  config.dataset.num_classes = -1
  assert bench.num_classes(config.dataset) == 10


def test_published_peaks_pick_the_compute_dtype():
  assert bench.published_peak_flops('NVIDIA H100 80GB HBM3', half_precision=True) == 989e12
  assert bench.published_peak_flops('NVIDIA H100 80GB HBM3', half_precision=False) == 495e12
  assert bench.published_peak_flops('NVIDIA H100 PCIe', half_precision=True) == 756e12
  assert bench.published_peak_flops('NVIDIA A100-SXM4-80GB', half_precision=True) == 312e12
  assert bench.published_peak_flops('cpu', half_precision=False) is None


def test_a_bad_step_count_is_a_config_error():
  config = schema.default_config()
  config.bench_steps = 0
  with pytest.raises(errors.ConfigError, match='bench_steps'):
    bench.measure(config)
