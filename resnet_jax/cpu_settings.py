"""XLA:CPU settings chosen by measurement, per processor model and jax version.

XLA:CPU's speed on CIFAR ResNets depends several-fold on its library fusions, and which
setting wins depends on the processor (measured side by side, ResNet-20 batch 128, fp32):
on an AVX2-only EPYC, switching YNNPACK's fusions off ran 3.1x faster than the defaults
(155 against 51 img/s); on an AVX-512 EPYC, dropping only YNNPACK's convolutions ran 1.33x
faster (548 against 413), and all fusions off 1.10x. No one flag set is right everywhere,
so the project measures.

`apply()` runs before JAX starts its backend (launch.py calls it): it reads the choice
cached for this processor and jax version, or measures each candidate once (a few seconds
each, in fresh processes, since XLA reads its flags once per process), caches the winner
next to the compilation cache, and puts its flags into XLA_FLAGS.

  RESNET_JAX_CPU_SETTINGS=auto        the default: cached choice, else measure
  RESNET_JAX_CPU_SETTINGS=off         leave XLA_FLAGS as they are
  RESNET_JAX_CPU_SETTINGS=remeasure   measure again and cache
  RESNET_JAX_CPU_SETTINGS=<candidate> use that candidate, unmeasured (see CANDIDATES)

A flag the user already has in XLA_FLAGS always wins over the chosen one. Nothing is
measured or applied when JAX will run on an accelerator. This module imports no jax at
module level, so it can run before the backend exists.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnet_jax.errors import CpuSettingsError

ENV = 'RESNET_JAX_CPU_SETTINGS'
SETTINGS_FILE_PREFIX = 'xla_cpu_settings'

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
# name -> XLA debug options. XLA 0.10's default YNNPACK fusion list is {dot, reduce,
# individual_dot, individual_convolution} (found by comparing compiled programs). The first
# candidate is XLA's own defaults; another must be clearly faster (MIN_GAIN) to be chosen.
CANDIDATES: dict[str, dict[str, str]] = {
    'xla_defaults': {},
    'ynn_without_convolutions': {_YNN: 'reduce,individual_dot'},
    'ynn_dots_only': {_YNN: 'individual_dot'},
    'ynn_off': {_YNN: ''},
}
MIN_GAIN = 1.03
# The measured workloads, each a real train step (bench.build_step) at fp32: a CIFAR
# ResNet-20 (16-64 channels at 32 px) and a wide net (WRN-16-4: 64-256 channels), the
# shapes that run on a CPU here. The choice maximises the geometric mean of their speeds.
WORKLOADS = {'resnet20_b128': ('resnet20', 128), 'wrn_16_4_b32': ('wrn_16_4', 32)}
ROUNDS = 5  # each round times one step of every candidate, so load changes hit all alike


def xla_flags(options: dict[str, str]) -> tuple[str, ...]:
  """The XLA_FLAGS form of a candidate's debug options."""
  return tuple(f'--{name}={value}' for name, value in options.items())


def compiler_options(options: dict[str, str]) -> dict[str, str]:
  """The same options for `Lowered.compile(compiler_options=...)`, which takes the enum
  names in full (LIBRARY_FUSION_TYPE_REDUCE) where XLA_FLAGS takes 'reduce'."""
  return {name: ','.join(f'LIBRARY_FUSION_TYPE_{item.upper()}' for item in value.split(',') if item)
          for name, value in options.items()}


# ----------------------------------------------------------------------------- processor


def processor() -> dict[str, str]:
  """The processor model, its vector extensions, and the jax version: what a choice is for."""
  model, flags = 'unknown', set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      for line in cpuinfo:
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and model == 'unknown':
          model = value.strip()
        elif key == 'flags' and not flags:
          flags = set(value.split())
  except OSError:
    pass
  extensions = [name for name in ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile') if name in flags]
  return {'model': model, 'extensions': ','.join(extensions) or 'none',
          'cores': str(os.cpu_count() or 0), 'jax': _version('jax'), 'jaxlib': _version('jaxlib')}


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def settings_path(cache_root: Path | None = None) -> Path:
  """One file per processor and jax version, beside the compilation cache."""
  from resnet_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  root = cache_root or compilation_cache.default_dir().parent
  key = hashlib.sha1(json.dumps(processor(), sort_keys=True).encode()).hexdigest()[:12]
  return Path(root) / f'{SETTINGS_FILE_PREFIX}-{key}.json'


# ----------------------------------------------------------------------------- applying


def accelerator_expected(environ=os.environ) -> bool:
  """Whether JAX will pick an accelerator: then the CPU is not what runs the model."""
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms.split(',')[0] != 'cpu'
  if shutil.which('nvidia-smi') and _has_module('jax_cuda12_plugin', 'jax_cuda13_plugin'):
    return True
  return _has_module('libtpu')


def _has_module(*names: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return any(importlib.util.find_spec(name) is not None for name in names)


def merge_flags(user_flags: str, chosen: tuple[str, ...]) -> str:
  """XLA_FLAGS with the chosen flags added, except those the user already sets."""
  user = user_flags.split()
  user_names = {flag.split('=', 1)[0] for flag in user}
  added = [flag for flag in chosen if flag.split('=', 1)[0] not in user_names]
  return ' '.join(user + added)


def apply(environ=os.environ, *, cache_root: Path | None = None, log=print) -> dict | None:
  """Puts this processor's fastest XLA:CPU settings into environ['XLA_FLAGS'].

  Call before JAX creates its backend. Returns the choice (name, flags, how it was
  chosen, the measured figures), or None when nothing was applied.
  """
  mode = environ.get(ENV, 'auto').strip() or 'auto'
  allowed = ('auto', 'off', 'remeasure', *CANDIDATES)
  if mode not in allowed:
    raise CpuSettingsError(f'{ENV}={mode!r} is not valid; allowed: {", ".join(allowed)}')
  if mode == 'off' or accelerator_expected(environ):
    return None
  _warn_if_backend_started(log)
  if mode in CANDIDATES:
    choice = {'name': mode, 'flags': list(xla_flags(CANDIDATES[mode])), 'chosen_by': f'{ENV}={mode}'}
  else:
    path = settings_path(cache_root)
    choice = None if mode == 'remeasure' else read_choice(path)
    if choice is None:
      log(f'Measuring XLA:CPU settings for this processor ({processor()["model"]}, '
          f'{processor()["extensions"]}); once per processor and jax version...', flush=True)
      try:
        choice = measure_all()
      except (RuntimeError, subprocess.TimeoutExpired) as error:  # never stop a run over it
        choice = {'name': next(iter(CANDIDATES)), 'flags': [], 'processor': processor(),
                  'chosen_by': f'fallback, the measurement failed ({str(error)[:200]})'}
      write_choice(path, choice)
      log(describe(choice), flush=True)
  environ['XLA_FLAGS'] = merge_flags(environ.get('XLA_FLAGS', ''), tuple(choice['flags']))
  environ['RESNET_JAX_CPU_SETTINGS_CHOSEN'] = choice['name']
  return choice


def _warn_if_backend_started(log) -> None:
  """XLA reads XLA_FLAGS when its backend starts: later changes would be ignored."""
  if 'jax' not in sys.modules:
    return
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    started = xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return
  if started:
    log('warning: JAX started its backend before the XLA:CPU settings were applied; they '
        'take effect in the next process', flush=True)


def read_choice(path: Path) -> dict | None:
  """The cached choice, or None when there is none (or it cannot be read: measure again)."""
  try:
    choice = json.loads(Path(path).read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(choice, dict) or choice.get('name') not in CANDIDATES:
    return None
  if choice.get('processor') != processor():
    return None
  choice['flags'] = list(xla_flags(CANDIDATES[choice['name']]))  # this version's flags
  return choice


def write_choice(path: Path, choice: dict) -> None:
  """Atomically, so concurrent first runs leave one whole file. An unwritable cache is
  not an error: the next run measures again."""
  try:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f'{path}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(choice, indent=1) + '\n')
    tmp.replace(path)
  except OSError:
    pass


def describe(choice: dict | None) -> str:
  """One line: what was chosen and why."""
  if choice is None:
    return 'XLA:CPU settings: none applied (accelerator, or RESNET_JAX_CPU_SETTINGS=off)'
  flags = ' '.join(choice['flags']) or '(XLA defaults)'
  line = f'XLA:CPU settings: {choice["name"]} {flags}; chosen by {choice["chosen_by"]}'
  measured = choice.get('img_per_s')
  if measured:
    line += '; img/s ' + '; '.join(
        f'{name} ' + ', '.join(f'{workload} {value:.1f}' for workload, value in speeds.items())
        for name, speeds in measured.items())
    line += f' (load average {choice.get("loadavg_during_measurement", 0):.1f})'
  return line


# ----------------------------------------------------------------------------- measuring


def measure_all(timeout_s: float = 600.0) -> dict:
  """Times every candidate in one fresh process; returns the choice to cache.

  One process compiles each workload once per candidate (XLA takes the candidate's
  options per compilation) and alternates between them round by round, so a load that
  comes and goes during the measurement slows every candidate alike.
  """
  env = {**os.environ, ENV: 'off', 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, '-m', 'resnet_jax.cpu_settings', '--time'], env=env,
                        capture_output=True, text=True, timeout=timeout_s, check=False)
  try:
    measured = json.loads(done.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise RuntimeError(f'timing the XLA:CPU candidates failed: {tail}') from None
  return choose(measured['img_per_s'], measured['loadavg'])


def choose(img_per_s: dict[str, dict[str, float]], loadavg: float = 0.0) -> dict:
  """The candidate with the best geometric-mean speed over the workloads, unless XLA's
  defaults are within MIN_GAIN of it."""
  def score(name):
    speeds = img_per_s[name].values()
    return statistics.geometric_mean(speeds) if all(v > 0 for v in speeds) else 0.0

  default = next(iter(CANDIDATES))
  best = max(img_per_s, key=score)
  if default in img_per_s and score(best) < MIN_GAIN * score(default):
    best = default
  return {'name': best, 'flags': list(xla_flags(CANDIDATES[best])),
          'chosen_by': f'measurement on {time.strftime("%Y-%m-%d")}',
          'img_per_s': img_per_s, 'loadavg_during_measurement': loadavg,
          'processor': processor()}


def time_candidates(rounds: int = ROUNDS) -> dict:
  """{'img_per_s': {candidate: {workload: img/s}}, 'loadavg': ...}, median over rounds."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resnet_jax import bench, parallel, schema  # pylint: disable=g-import-not-at-top
  from resnet_jax.model import preset  # pylint: disable=g-import-not-at-top
  mesh = parallel.data_mesh(jax.devices()[:1])
  results: dict[str, dict[str, float]] = {name: {} for name in CANDIDATES}
  for workload, (preset_name, batch_size) in WORKLOADS.items():
    config = schema.default_config()
    config.model = preset(preset_name)
    config.batch_size = batch_size
    _, step, state = bench.build_step(config, mesh, 10)
    batch = bench.synthetic_batch(config, mesh, 10)
    lowered = step.lower(state, {}, batch)
    compiled = {name: lowered.compile(compiler_options=compiler_options(options))
                for name, options in CANDIDATES.items()}
    states = {name: jax.tree.map(jnp.copy, state) for name in CANDIDATES}
    seconds: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for round_index in range(rounds + 1):  # round 0 warms up
      for name, program in compiled.items():
        start = time.perf_counter()
        states[name], metrics = program(states[name], {}, batch)
        jax.block_until_ready(metrics)
        if round_index:
          seconds[name].append(time.perf_counter() - start)
    for name in CANDIDATES:
      results[name][workload] = batch_size / statistics.median(seconds[name])
  return {'img_per_s': results, 'loadavg': os.getloadavg()[0]}


if __name__ == '__main__':
  if sys.argv[1:] == ['--time']:
    print(json.dumps(time_candidates()), flush=True)
  else:
    print(describe(apply()))
