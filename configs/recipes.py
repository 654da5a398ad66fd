"""What several config files share: the CIFAR recipe of He et al., the two CPU-sized
settings, and the one parser of a config file's argument.

A config file's argument is a comma list of variant names and `key=N` numbers:
`configs/wrn.py:dropout,quick`, `experiments/degradation.py:cpu,seeds=3` (`parse`).
Two variants mean the same in every file that has them:

* `:quick` (`quick`): a plumbing check, minutes on a CPU: the run's size and schedule
  shrunk to 256 steps on 4,096 training images, the full test split evaluated once at the
  end. It shows nothing about the papers' claims.
* `:cpu` (`cpu`): a short cosine schedule that this project's 2-core CPU can run on the
  real data, sized by each file to fit its time.
"""

from __future__ import annotations

from typing import Any, Sequence

from resnet_jax.errors import ConfigError

# :quick runs a fixed subset of the real training split (the full test split is kept, so
# errors are comparable across runs). Batches of 32 give 256 steps in 2 epochs of 4,096
# images: enough for the orderings of the papers to show early in training, where 3 epochs
# at batch 128 (48 steps) showed only noise.
QUICK_TRAIN_EXAMPLES = 4096
QUICK_EPOCHS = 2
QUICK_BATCH = 32
QUICK_LEARNING_RATE = 0.05
SIZES = ('quick', 'cpu')  # a run has at most one of them
CIFAR_TRAIN_EXAMPLES = 50_000  # what :cpu trains on when train_examples is -1


def parse(arg: str | None, variants: Sequence[str],
          numbers: Sequence[str] = ()) -> dict[str, Any]:
  """'dropout,quick' -> {'dropout': True, 'quick': True, ...}, every variant a bool;
  'quick,seeds=3' with numbers=('seeds',) -> {'quick': True, 'seeds': 3, ...}, every
  number an int > 0 or None when unset. Anything else is one ConfigError line."""
  options: dict[str, Any] = {name: False for name in variants}
  options.update({name: None for name in numbers})
  unknown = []
  for token in filter(None, (t.strip() for t in (arg or '').split(','))):
    key, sep, value = token.partition('=')
    if not sep and key in variants:
      options[key] = True
    elif sep and key in numbers and value.isdigit() and int(value) > 0:
      options[key] = int(value)
    else:
      unknown.append(token)
  if unknown:
    allowed = list(variants) + [f'{name}=N' for name in numbers]
    raise ConfigError(f'unknown config variant(s) {sorted(unknown)}; allowed: '
                      f'{", ".join(allowed)} (combine with commas, e.g. :{allowed[0]},'
                      f'{allowed[-1]})')
  if all(options.get(size) for size in SIZES):
    raise ConfigError("choose one of the sizes 'quick' and 'cpu', not both")
  return options


def he_et_al_cifar(config) -> None:
  """He et al. 2015 (Sec. 4.2), reused by He et al. 2016 ("same as [1]"): SGD 0.9 without
  Nesterov (Caffe), wd 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations,
  64k iterations; 110 layers and deeper start at 0.01 for 400 iterations (He et al. 2015
  state it for ResNet-110; He et al. 2016 warm up every CIFAR run, set in
  configs/preact_cifar.py)."""
  config.batch_size = 128
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.num_train_steps = 64_000
  config.lr_boundaries_steps = (32_000, 48_000)
  config.lr_decay_factor = 0.1
  config.constant_warmup_steps = -1  # lr 0.01 for 400 iterations at depth >= 110


def quick(config) -> None:
  """The :quick size: QUICK_TRAIN_EXAMPLES training images, QUICK_EPOCHS epochs of
  QUICK_BATCH with a cosine schedule from QUICK_LEARNING_RATE, no warm-up, one evaluation
  at the end (an evaluation reads the whole test split, which on a 2-core CPU costs about
  as much as an epoch of this subset), one checkpoint kept."""
  _short_cosine_run(config, train_examples=QUICK_TRAIN_EXAMPLES, batch_size=QUICK_BATCH,
                    learning_rate=QUICK_LEARNING_RATE, epochs=QUICK_EPOCHS, evaluations=1,
                    log_every_steps=16, checkpoint_every_steps=100)
  config.keep_checkpoints = 1


def cpu(config, *, epochs: float, train_examples: int = -1, evaluations: int = 4,
        warmup_steps: int = 0) -> None:
  """The :cpu size: `epochs` of cosine-decayed SGD with Nesterov momentum 0.9, lr 0.1,
  weight decay 5e-4, batch 128, on `train_examples` real CIFAR training images (all by
  default), with `evaluations` evaluations of the whole test split along the way and a
  linear warm-up over the first `warmup_steps` steps (none by default).
  Short schedules reach more of their accuracy with cosine decay and the heavier weight
  decay of Zagoruyko & Komodakis than with He et al.'s steps at 1e-4."""
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  _short_cosine_run(config, train_examples=train_examples, batch_size=128, learning_rate=0.1,
                    epochs=epochs, evaluations=evaluations, log_every_steps=50,
                    checkpoint_every_steps=500)
  examples = train_examples if train_examples > 0 else CIFAR_TRAIN_EXAMPLES
  config.warmup_epochs = warmup_steps * config.batch_size / examples


def _short_cosine_run(config, *, train_examples: int, batch_size: int, learning_rate: float,
                      epochs: float, evaluations: int, log_every_steps: int,
                      checkpoint_every_steps: int) -> None:
  """What :quick and :cpu share: `epochs` on `train_examples` images (-1: all), the lr
  cosine-decayed from `learning_rate`, no step drops and no warm-up, `evaluations`
  evaluations spread over the run."""
  config.dataset.max_train_examples = train_examples
  config.batch_size = batch_size
  config.learning_rate = learning_rate
  config.num_train_steps = -1
  config.num_epochs = epochs
  config.lr_schedule = 'cosine'
  config.lr_boundaries_steps = ()
  config.warmup_epochs = 0.0
  config.constant_warmup_steps = 0
  config.log_every_steps = log_every_steps
  config.eval_every_epochs = epochs / evaluations
  config.checkpoint_every_steps = checkpoint_every_steps
