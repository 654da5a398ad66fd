"""What the ablation experiments share: their argument, the CIFAR recipes, quick mode,
reading a trained run back, and the figure conventions.

An experiment's argument is a comma list of variant names and `key=N` numbers, e.g.
`experiments/degradation.py:quick,seeds=3`. Every experiment has three sizes:

* default: the paper's setup (for a GPU);
* `:cpu`: the smallest setting on the real CIFAR-10 at which the paper's effect was
  measured to stand clear of the seed-to-seed spread, within 45 minutes on this project's
  2-core CPU (the measured figures are in each docstring and the README);
* `:quick`: a plumbing check for the tests, minutes on a CPU; it shows nothing about the
  papers' claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from resnet_jax import sweeps
from resnet_jax.errors import ConfigError
from resnet_jax.sweeps import report

# Quick mode: minutes per experiment on a 2-core CPU, on a fixed subset of the real training
# split (the full test split is kept, so errors are comparable across runs). Batches of 32
# give 256 steps in 2 epochs of 4,096 images: enough for the orderings of the papers to
# show early in training, where 3 epochs at batch 128 (48 steps) showed only noise.
QUICK_TRAIN_EXAMPLES = 4096
QUICK_EPOCHS = 2
QUICK_BATCH = 32
QUICK_LEARNING_RATE = 0.05


CPU_SEEDS = 2  # the :cpu variants show the seed-to-seed spread


def parse_arg(arg: str | None, variants: Sequence[str] = ('quick', 'cpu'),
              numbers: Sequence[str] = ('seeds',)) -> dict[str, Any]:
  """'quick,seeds=3' -> {'quick': True, 'cpu': False, 'seeds': 3}; unset numbers are None."""
  options: dict[str, Any] = {name: False for name in variants}
  options.update({name: None for name in numbers})
  for token in filter(None, (t.strip() for t in (arg or '').split(','))):
    key, sep, value = token.partition('=')
    if not sep and key in variants:
      options[key] = True
    elif sep and key in numbers and value.isdigit() and int(value) > 0:
      options[key] = int(value)
    else:
      allowed = list(variants) + [f'{n}=N' for n in numbers]
      raise ConfigError(f'unknown experiment argument {token!r}; allowed: {", ".join(allowed)} '
                        '(combine with commas, e.g. :quick,seeds=3)')
  if options.get('quick') and options.get('cpu'):
    raise ConfigError("choose one of the experiment sizes 'quick' and 'cpu', not both")
  return options


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


def make_quick(config, *, train_examples: int = QUICK_TRAIN_EXAMPLES,
               epochs: int = QUICK_EPOCHS, log_every: int = 16):
  """Shrinks a recipe to a CPU-sized run: a training subset, a few epochs of small batches
  with a cosine schedule, one evaluation at the end (an evaluation reads all 10,000 test
  images, which on a 2-core CPU costs about as much as an epoch of this subset)."""
  config.dataset.max_train_examples = train_examples
  config.batch_size = QUICK_BATCH
  config.learning_rate = QUICK_LEARNING_RATE
  config.num_train_steps = -1
  config.num_epochs = epochs
  config.lr_schedule = 'cosine'
  config.lr_boundaries_steps = ()
  config.warmup_epochs = 0.0
  config.log_every_steps = log_every
  config.eval_every_epochs = float(epochs)
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 1
  return config


def make_cpu(config, *, epochs: float, train_examples: int = -1, evaluations: int = 4):
  """The :cpu size: the short cosine schedule of configs/resnet_cifar.py:cpu
  (config.short_cpu_recipe) for `epochs` on `train_examples` real training images (all by
  default), with `evaluations` evaluations of the whole test split along the way."""
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.short_cpu_recipe(config, epochs=epochs, train_examples=train_examples)
  config.eval_every_epochs = epochs / evaluations
  config.keep_checkpoints = 1
  return config


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
