"""Wide ResNet WRN-28-10 on CIFAR-10, Zagoruyko & Komodakis 2016 (arXiv:1605.07146).

Command:   python launch.py --config=configs/wrn.py --workdir=runs/wrn_28_10
           other WRN-d-k: --config.model.depth=40 --config.model.width=4
           CIFAR-100:     --config.dataset.name=cifar100
Variants:  :dropout  dropout 0.3 between the convolutions (the paper's best CIFAR results)
           :quick    WRN-16-2, 2 epochs on 5,000 training images (CPU)
           Combine with commas: configs/wrn.py:dropout,quick
Recipe:    SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, lr x0.2 at
           epochs 60, 120 and 160, 200 epochs; 4-pixel reflection pad, 32x32 crop, flip;
           per-channel normalisation.
Expected:  test error (paper Tables 4 and 6): WRN-28-10 4.17% on CIFAR-10 (20.50% on
           CIFAR-100); with dropout 3.89% (18.85%).
           :quick on ../shared/data/cifar10-jpg.tar.gz: 40.96% test accuracy (measured).
Time:      :quick 1 min 27 s on a 2-core CPU (209 img/s, measured). The full run is 78,000
           steps; at the target of 10,000 img/s on one H100 (bf16) that would be about
           17 min, not yet measured on a GPU.
"""

from resnet_jax import config as config_lib
from resnet_jax import presets


def get_config(arg=None):
  variants = config_lib.variants(arg, ('dropout', 'quick'))
  config = config_lib.default_config()
  config.model = presets.preset('wrn_28_10')
  config.batch_size = 128
  config.num_epochs = 200
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.lr_schedule = 'step'
  config.lr_boundaries_epochs = (60, 120, 160)
  config.lr_decay_factor = 0.2
  config.augment.pad_mode = 'reflect'  # the paper pads with reflections
  if 'dropout' in variants:
    config.model.dropout_rate = 0.3
  if 'quick' in variants:
    config.model.depth = 16
    config.model.width = 2
    config.dataset.max_train_examples = 5_000
    config.num_epochs = 2
    config.lr_schedule = 'cosine'
    config.log_every_steps = 10
    config.checkpoint_every_steps = 50
  return config
