"""The persistent XLA compilation cache, on by default for every mode.

A compiled train step is written to disk the first time and read back on every later run
with the same program, shapes, flags and jax version: a resumed or repeated run, a sweep
point that differs only in values the step takes as inputs, a test run twice.

  cache directory: `cache_dir`, else $RESNET_JAX_CACHE/xla, else ~/.cache/resnet_jax/xla
  off:             RESNET_JAX_COMPILATION_CACHE=0

Measured on a 2-core CPU (benchmarks/RESULTS.md): the ResNet-56 train step compiles in
about 11 s cold and loads in about 1 s warm.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

# Programs that compile faster than this are not worth a disk round trip. JAX's default
# (1 s) would skip the eval step and the small models' train steps on a GPU.
MIN_COMPILE_TIME_S = 0.2


def default_dir() -> Path:
  root = os.environ.get('RESNET_JAX_CACHE') or Path.home() / '.cache' / 'resnet_jax'
  return Path(root) / 'xla'


def enable(cache_dir: str | os.PathLike | None = None) -> Path | None:
  """Turns the cache on (call before the first compilation); returns its directory.

  Returns None, and changes nothing, when RESNET_JAX_COMPILATION_CACHE=0 or the
  directory cannot be created (a read-only home, say): the run then simply compiles.
  """
  if os.environ.get('RESNET_JAX_COMPILATION_CACHE', '1').lower() in ('0', 'false', 'no', 'off'):
    return None
  directory = Path(cache_dir) if cache_dir else default_dir()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_S)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  # JAX decides once per process whether the cache is in use; start that decision afresh in
  # case something compiled before this call.
  from jax.experimental.compilation_cache import compilation_cache
  compilation_cache.reset_cache()
  return directory
