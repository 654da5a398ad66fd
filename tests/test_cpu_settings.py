"""XLA:CPU settings: chosen by measurement once per processor and jax version, cached,
put into XLA_FLAGS before JAX starts its backend; the user's own flags win."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax import cpu_settings, errors

ROOT = Path(__file__).resolve().parents[1]
YNN = '--xla_cpu_experimental_ynn_fusion_type'


def cached(tmp_path, name: str) -> Path:
  """A cache root holding `name` as this processor's measured choice."""
  choice = cpu_settings.choose({name: {'resnet20_b128': 2.0}, 'xla_defaults': {'resnet20_b128': 1.0}})
  assert choice['name'] == name
  cpu_settings.write_choice(cpu_settings.settings_path(tmp_path), choice)
  return tmp_path


def test_the_cached_choice_goes_into_xla_flags(tmp_path):
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  choice = cpu_settings.apply(environ, cache_root=cached(tmp_path, 'ynn_off'), log=print)
  assert choice['name'] == 'ynn_off'
  assert environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=8', f'{YNN}=']


def test_a_flag_the_user_sets_wins_over_the_choice(tmp_path):
  environ = {'XLA_FLAGS': f'{YNN}=individual_dot'}
  cpu_settings.apply(environ, cache_root=cached(tmp_path, 'ynn_off'), log=print)
  assert environ['XLA_FLAGS'] == f'{YNN}=individual_dot'


def test_nothing_is_measured_or_applied_for_an_accelerator_or_when_off(tmp_path):
  for environ in ({'JAX_PLATFORMS': 'cuda'}, {'RESNET_JAX_CPU_SETTINGS': 'off'}):
    assert cpu_settings.apply(environ, cache_root=tmp_path, log=print) is None
    assert 'XLA_FLAGS' not in environ
  assert not list(tmp_path.iterdir())


def test_without_a_cached_choice_it_measures_once_and_caches(tmp_path, monkeypatch):
  calls = []

  def fake_measurement():
    calls.append(1)
    return cpu_settings.choose({'xla_defaults': {'w': 10.0}, 'ynn_without_convolutions': {'w': 13.0}})

  monkeypatch.setattr(cpu_settings, 'measure_all', fake_measurement)
  for _ in range(2):
    environ = {}
    assert cpu_settings.apply(environ, cache_root=tmp_path, log=print)['name'] == \
        'ynn_without_convolutions'
    assert environ['XLA_FLAGS'] == f'{YNN}=reduce,individual_dot'
  assert len(calls) == 1
  monkeypatch.setenv('RESNET_JAX_CPU_SETTINGS', 'remeasure')
  cpu_settings.apply(dict(os.environ), cache_root=tmp_path, log=print)
  assert len(calls) == 2


def test_a_choice_made_on_another_processor_or_jax_is_measured_again(tmp_path):
  path = cpu_settings.settings_path(cached(tmp_path, 'ynn_off'))
  record = json.loads(path.read_text())
  record['processor'] = {**record['processor'], 'jaxlib': '0.0.1'}
  path.write_text(json.dumps(record))
  assert cpu_settings.read_choice(path) is None


def test_the_defaults_stay_unless_another_candidate_is_clearly_faster():
  close = cpu_settings.choose({'xla_defaults': {'a': 100.0, 'b': 10.0},
                               'ynn_off': {'a': 101.0, 'b': 10.1}})
  assert close['name'] == 'xla_defaults' and close['flags'] == []
  # The geometric mean over workloads decides: 1.5x on one beats 0.9x on the other.
  mixed = cpu_settings.choose({'xla_defaults': {'a': 100.0, 'b': 10.0},
                               'ynn_off': {'a': 90.0, 'b': 15.0}})
  assert mixed['name'] == 'ynn_off'


def test_a_bad_setting_is_one_line_naming_the_allowed_values():
  with pytest.raises(errors.CpuSettingsError, match='allowed: auto, off, remeasure'):
    cpu_settings.apply({'RESNET_JAX_CPU_SETTINGS': 'fastest'})


def test_candidate_flags_reach_the_compiler(tmp_path):
  """In a fresh process: the chosen flags are in place before the backend starts, and the
  compiled program shows them (ynn_off leaves no YNNPACK fusion in a matmul)."""
  program = (
      'import os; from resnet_jax import cpu_settings; cpu_settings.apply(); '
      'import jax, jax.numpy as jnp; '
      'f = jax.jit(lambda a, b: jnp.tanh(a @ b)); '
      'text = f.lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text(); '
      'print(os.environ["XLA_FLAGS"]); print("ynn" in text)')
  env = {**os.environ, 'RESNET_JAX_CACHE': str(cached(tmp_path, 'ynn_off')),
         'RESNET_JAX_CPU_SETTINGS': 'auto', 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', program], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split('\n')
  assert out[0] == f'{YNN}=' and out[1] == 'False'
  env['RESNET_JAX_CPU_SETTINGS'] = 'xla_defaults'
  out = subprocess.run([sys.executable, '-c', program], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split('\n')
  assert out[1] == 'True'  # XLA's defaults run the matmul through YNNPACK
