"""Test-wide setup: 8 simulated CPU devices, so data-parallel code runs as on a GPU host."""

import os

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests run on XLA's own defaults: the same programs and numerics on every processor, and no
# measurement of XLA:CPU settings (resnet_jax/cpu_settings.py) in every fresh checkout.
os.environ.setdefault('RESNET_JAX_CPU_SETTINGS', 'off')

# One compilation and dataset cache for the whole session, shared with the subprocesses the
# tests start: identical tiny programs compile once. Never the user's ~/.cache.
import tempfile  # noqa: E402

if 'RESNET_JAX_CACHE' not in os.environ:
  os.environ['RESNET_JAX_CACHE'] = _SESSION_CACHE = tempfile.mkdtemp(prefix='resnet_jax_tests_')

from resnet_jax import compilation_cache  # noqa: E402

compilation_cache.enable()


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if '_SESSION_CACHE' in globals():
    import shutil
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
