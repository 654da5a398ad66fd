"""The one entry point: train, summarise, benchmark or sweep a config.

  python launch.py --config=configs/wrn.py [--config.model.depth=40] [--workdir=W]
  python launch.py --config=configs/resnet_cifar.py:quick --mode=summary
  python launch.py --config=experiments/degradation.py:quick --sweep --workdir=W

Multi-host: `jax.distributed.initialize()` is called by itself on SLURM and TPU pods, or
with --coordinator_address/--num_processes/--process_id elsewhere.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/wrn.py or configs/wrn.py:quick.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard files and config.json go here. '
    'Rerunning with the same workdir resumes. Default: runs/<config name>.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'summary', 'bench'], 'What to do.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-host runs off SLURM/TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (hosts).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
flags.mark_flags_as_required(['config'])


def _default_workdir() -> str:
  """runs/<config file name>[_<variant>], e.g. runs/wrn_quick."""
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  name = os.path.splitext(os.path.basename(config_path))[0]
  argument = flags.FLAGS['config'].serialize().partition(':')[2]
  variant = argument.replace(',', '_')
  return os.path.join('runs', name + (f'_{variant}' if variant else ''))


def _user_errors() -> tuple[type[Exception], ...]:
  """Errors caused by a bad config, path or file: shown as one line, without a traceback."""
  from resnet_jax import datasets
  from resnet_jax.presets import ConfigError
  return (ConfigError, datasets.DatasetError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    _run(_CONFIG.value)
  except _user_errors() as error:
    sys.exit(f'error: {error}')


def _run(config):
  from resnet_jax import config as config_lib
  config_lib.validate(config)
  workdir = _WORKDIR.value or _default_workdir()
  if _MODE.value == 'summary':
    from resnet_jax import summary
    print(summary.format_summary(summary.summarize(config)))
    return
  from resnet_jax import parallel
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _MODE.value == 'bench':
    from resnet_jax import bench
    bench.run(config)
  else:
    from resnet_jax import train
    train.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)
