"""The one entry point: train, summarise, benchmark or sweep a config.

  python launch.py --config=configs/wrn.py [--config.model.depth=40] [--workdir=W]
  python launch.py --config=configs/resnet_cifar.py:quick --mode=summary
  python launch.py --config=experiments/degradation.py:quick --sweep --workdir=W

Multi-host: `jax.distributed.initialize()` is called by itself on SLURM and TPU pods, or
with --coordinator_address/--num_processes/--process_id elsewhere.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/wrn.py or configs/wrn.py:quick.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard files and config.json go here. '
    'Rerunning with the same workdir resumes. Default: runs/<config name>[_<variant>]'
    '[_<overrides>], e.g. runs/resnet_cifar_shortcut=none for --config.model.shortcut=none.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'summary', 'bench'], 'What to do.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-host runs off SLURM/TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (hosts).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
_SWEEP = flags.DEFINE_bool(
    'sweep', False, "Run every point of the config file's get_sweep(arg) in its own "
    'subfolder of --workdir (finished points are skipped), then write results.csv and '
    'report.md. With --mode=summary: list the points and their status and refresh the '
    'report from finished points; train nothing.')
_SWEEP_EXECUTOR = flags.DEFINE_enum(
    'sweep_executor', 'local', ['local', 'submitit_local', 'slurm'],
    'local: points one after another here; submitit_local: one local job per point, one '
    'per GPU at a time; slurm: one SLURM job per point (submitit).')
_SWEEP_EXECUTOR_ARGS = flags.DEFINE_string(
    'sweep_executor_args', '', 'Comma-separated key=value for the submitit executor, e.g. '
    "'partition=gpu,timeout_min=720,gpus_per_node=1'; slurm also takes wait=0 (submit and "
    'exit), submitit_local parallel=N (jobs at once; default one per GPU).')
_SWEEP_VMAP = flags.DEFINE_enum(
    'sweep_vmap', 'off', ['off', 'on', 'auto'],
    'Train points that differ only in seed/learning_rate/weight_decay/momentum as one '
    'vmapped program. off: one by one (default; on a 2-core CPU vmapping was 0.3x as fast); '
    'on: always; auto: time both ways for a few steps per architecture, vmap if >= 1.2x.')
flags.mark_flags_as_required(['config'])


def _default_workdir() -> str:
  config_flag = flags.FLAGS['config']
  return default_workdir(config_flags.get_config_filename(config_flag),
                         config_flag.serialize().partition(':')[2],
                         config_flags.get_override_values(config_flag))


def default_workdir(config_path: str, variant: str, overrides: dict) -> str:
  """runs/<config file name>[_<variant>][_<overrides>], e.g. runs/wrn_quick_depth=40,width=4.

  The --config.x=y overrides are part of the name (sorted, named as sweep points are), so
  runs that differ in them, a plain twin and its residual net say, never share a folder.
  """
  from resnet_jax import schema
  name = os.path.splitext(os.path.basename(config_path))[0]
  variant = variant.replace(',', '_')
  overrides = dict(sorted(overrides.items()))
  parts = [name] + [variant] * bool(variant) + [schema.point_name(overrides)] * bool(overrides)
  return os.path.join('runs', '_'.join(parts))


def _honour_num_epochs(config, overrides) -> str | None:
  """Makes a --config.num_epochs override count where the config sets num_train_steps.

  num_train_steps > 0 wins over num_epochs, so a recipe counted in iterations (He et al.:
  64,000) would ignore the override. The override now clears num_train_steps; the
  recipe's lr boundaries in steps (32,000 and 48,000) become the same fractions of the
  new length in epochs, so 2 epochs keep the recipe's shape. Returns the line that says
  so; both overrides at once are a ConfigError naming the one that wins.
  """
  from resnet_jax.errors import ConfigError
  if 'num_epochs' not in overrides or config.num_train_steps <= 0:
    return None
  if 'num_train_steps' in overrides:
    raise ConfigError(f'num_epochs={config.num_epochs} and num_train_steps='
                      f'{config.num_train_steps} are both set and num_train_steps wins; give '
                      'one of them')
  recipe_steps = config.num_train_steps
  config.num_train_steps = -1
  line = f'num_epochs={config.num_epochs:g} replaces the config\'s num_train_steps={recipe_steps}'
  boundaries = tuple(config.lr_boundaries_steps)
  if boundaries and 'lr_boundaries_steps' not in overrides:
    config.lr_boundaries_steps = ()
    if 'lr_boundaries_epochs' not in overrides:
      config.lr_boundaries_epochs = tuple(round(b / recipe_steps * config.num_epochs, 4)
                                          for b in boundaries)
      line += (f'; its lr boundaries at steps {", ".join(map(str, boundaries))} (' +
               ', '.join(f'{b / recipe_steps:.0%}' for b in boundaries) +
               ' of the run) move to epochs ' +
               ', '.join(f'{e:g}' for e in config.lr_boundaries_epochs))
  return line


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = _CONFIG.value
    config.keys()  # a file that failed to load surfaces here, on first use
  except OSError as error:  # --config names a file that cannot be loaded
    _config_file_error(error)
  from resnet_jax.errors import ResnetJaxError
  try:
    _run(config)
  except ResnetJaxError as error:  # a bad config, path, file or workdir: one line
    sys.exit(f'error: {error}')
  except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
    print('interrupted', file=sys.stderr)
    sys.exit(130)


def _apply_cpu_settings():
  """This processor's fastest XLA:CPU flags, before JAX starts its backend (cpu_settings.py)."""
  from resnet_jax import cpu_settings
  return cpu_settings.apply()


def _run(config):
  from resnet_jax import schema
  note = _honour_num_epochs(config, config_flags.get_override_values(flags.FLAGS['config']))
  if note:
    print(note, flush=True)
  schema.validate(config)
  workdir = _WORKDIR.value or _default_workdir()
  if _MODE.value != 'summary':
    cpu_choice = _apply_cpu_settings()
    from resnet_jax import compilation_cache
    compilation_cache.enable()  # a rerun, resume or sweep point skips compilation
  if _SWEEP.value:
    from resnet_jax.sweeps import execute
    execute.main(config, config_flags.get_config_filename(flags.FLAGS['config']), workdir,
               executor=_SWEEP_EXECUTOR.value, executor_args=_SWEEP_EXECUTOR_ARGS.value,
               vmap=_SWEEP_VMAP.value, dry_run=_MODE.value == 'summary')
    return
  if _MODE.value == 'summary':
    from resnet_jax import summary
    print(summary.format_summary(summary.summarize(config)))
    return
  from resnet_jax import parallel
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _MODE.value == 'bench':
    from resnet_jax import bench, cpu_settings
    print(cpu_settings.describe(cpu_choice), flush=True)
    bench.run(config)
  else:
    from resnet_jax import train
    outcome = train.train_and_evaluate(config, workdir)
    if outcome.get('signal') == 'Ctrl-C':
      sys.exit(130)  # saved, but the run did not finish: `a && b` must not go on to b


def _config_file_error(error: OSError):
  text = f'{error}\n{error.__cause__}'
  lines = [line.strip() for line in text.splitlines() if '[Errno' in line] or [str(error)]
  sys.exit(f'error: {lines[-1]}; --config takes a config file such as configs/wrn.py')


def _parse_flags(argv):
  """absl's parser, with a bad --config file, variant or override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line.split('Error: ', 1)[1] for line in lines if 'Error: ' in line]
    missing = [line for line in lines if '[Errno' in line]
    sys.exit(f'error: {(causes or missing or lines)[-1]}')
  except (AttributeError, KeyError) as error:  # an override naming a key the config lacks
    words = re.findall(r"Did you mean.*?\?|[\w.]+", str(error).replace('\\n', ' '))
    sys.exit(f'error: unknown config key {" ".join(words[:1])!r}; {" ".join(words[1:2])}'
             .rstrip('; '))
  except OSError as error:  # a missing --config file, loaded early by an override
    _config_file_error(error)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
