"""What the ablation experiments share: their argument and sizes, the CIFAR recipe,
reading a trained run back, and the figure conventions.

An experiment's argument is a comma list of variant names and `key=N` numbers, e.g.
`experiments/degradation.py:quick,seeds=3` (configs/recipes.py `parse`, as every config
file's). Every experiment has three sizes:

* default: the paper's setup (for a GPU);
* `:cpu`: a setting on the real CIFAR-10, 2 seeds, sized to finish within 45 minutes on
  this project's 2-core CPU. Whether the paper's effect stands clear of the seed-to-seed
  spread there is what each run measured, stated in its docstring and the README (for some
  claims it does not, at this budget);
* `:quick`: the plumbing check of configs/recipes.py, minutes on a CPU; it shows nothing
  about the papers' claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from configs import recipes
from resnet_jax import sweeps
from resnet_jax.errors import ConfigError
from resnet_jax.sweeps import report

CPU_SEEDS = 2  # the :cpu variants show the seed-to-seed spread
# The :cpu runs ramp the lr up linearly over their first CPU_WARMUP_STEPS steps. Without a
# warm-up, degradation:cpu's ResNet-56 diverged at lr 0.1 within 50 steps on both seeds
# (batch loss 3.2 and 3.5, then stuck at chance, 2.30, with a gradient norm of 0.1) and
# ended at 81% training error, a collapse rather than a result. He et al. 2015 (Sec. 4.2)
# warm up ResNet-110 for the same reason ("0.1 is slightly too large to start converging").
CPU_WARMUP_STEPS = 150


def options(arg: str | None, numbers: Sequence[str] = ('seeds',)) -> dict[str, Any]:
  """An experiment's argument: its size (:quick or :cpu) and `numbers` such as seeds=N."""
  return recipes.parse(arg, recipes.SIZES, numbers)


def sized(config, options: dict[str, Any], **cpu):
  """`config` at the chosen size: recipes.quick for :quick, recipes.cpu(**cpu) with a
  linear warm-up over CPU_WARMUP_STEPS steps for :cpu, unchanged (the paper's setup)
  otherwise."""
  if options['quick']:
    recipes.quick(config)
  if options['cpu']:
    recipes.cpu(config, warmup_steps=CPU_WARMUP_STEPS, **cpu)
    config.keep_checkpoints = 1  # a sweep keeps one checkpoint per point
  return config


def seeds(options: dict[str, Any], default: int = 1) -> list[sweeps.Point]:
  """Seeds 0..n-1: `seeds=n`, else CPU_SEEDS for :cpu, else `default`."""
  count = options.get('seeds') or (CPU_SEEDS if options.get('cpu') else default)
  return sweeps.axis('seed', list(range(count)))


def size(options: dict[str, Any]) -> str:
  """'quick', 'cpu' or 'full': which of an experiment's settings to use."""
  return 'quick' if options.get('quick') else 'cpu' if options.get('cpu') else 'full'


def shortcut_depth_sweep(options: dict[str, Any], shortcuts: Sequence[str],
                         depths: dict[str, Sequence[int]]) -> list:
  """Every shortcut x every depth of the chosen size (depths[size]) x the seeds."""
  return sweeps.product(sweeps.axis('model.shortcut', list(shortcuts)),
                       sweeps.axis('model.depth', list(depths[size(options)])), seeds(options))


def block_names(model_config, experiment: str) -> list[str]:
  """'stage1_block0', ... from the input to the output; the per-block measurements read
  blocks by these names, which a scanned stage does not have."""
  from resnet_jax.model import architecture  # pylint: disable=g-import-not-at-top
  arch = architecture(model_config)
  if arch['scan_blocks']:
    raise ConfigError(f'{experiment} reads every block by name; run it with '
                      '--config.model.scan_blocks=false')
  return [f'stage{s}_block{b}' for s, n in enumerate(arch['stage_sizes'], 1) for b in range(n)]


def he2015_cifar():
  """The CIFAR-10 recipe of He et al. 2015 (configs/resnet_cifar.py), ResNet-20."""
  from configs import resnet_cifar  # pylint: disable=g-import-not-at-top
  return resnet_cifar.get_config()


# ----------------------------------------------------------------------------- reading runs


def finished(runs) -> list:
  """Runs that trained to the end, with their results attached as `run.result`."""
  done = []
  for run in runs:
    results = run.results()
    if results and not results.get('diverged'):
      run.result = results
      done.append(run)
  return done


def restore_variables(run) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a run's newest checkpoint, as host arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = Path(run.workdir) / 'checkpoints'
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {directory}')
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(directory / str(max(steps)) / 'state')
  return jax.tree.map(np.asarray, {'params': state['params'],
                                   'batch_stats': state['batch_stats']})


def test_images(config, count: int):
  """The first `count` test images, normalised as the model saw them, and their labels."""
  from resnet_jax.data import augment, in_memory  # pylint: disable=g-import-not-at-top
  dataset = in_memory.load(config.dataset, seed=config.seed)
  images = augment.normalize(dataset.test.images[:count], dataset.mean, dataset.std)
  return images, dataset.test.labels[:count], dataset.num_classes


def write_json(path: Path, value) -> None:
  Path(path).write_text(json.dumps(value, indent=1) + '\n')


# ----------------------------------------------------------------------------- figures

pyplot = report.pyplot


def depth_colors(depths: Sequence[int]) -> dict[int, Any]:
  """Shallow to deep as light to dark, so depth reads at a glance."""
  plt = pyplot()
  depths = sorted(set(depths))
  cmap = plt.get_cmap('viridis')
  return {d: cmap(0.85 * (1 - i / max(len(depths) - 1, 1))) for i, d in enumerate(depths)}


def percent(value) -> str:
  return '–' if value is None or not np.isfinite(value) else f'{100 * value:.2f}'
