"""Wide ResNet WRN-28-10 on CIFAR-10, Zagoruyko & Komodakis 2016 (arXiv:1605.07146).

Command:   python launch.py --config=configs/wrn.py --workdir=runs/wrn_28_10
           other WRN-d-k: --config.model.depth=40 --config.model.width=4
           CIFAR-100:     --config.dataset.name=cifar100
Variants:  :dropout  dropout 0.3 between the convolutions (the paper's best CIFAR results)
           :zca      global contrast normalisation + ZCA whitening (pylearn2's recipe, as
                     the v1 Lua code preprocessed CIFAR): the setting of the paper's Table 4
           :quick    WRN-16-2, the plumbing check of configs/recipes.py: 2 epochs of
                     batch 32 on 4,096 training images (tests)
           Combine with commas: configs/wrn.py:dropout,quick
Recipe:    as the authors' Lua code that produced the paper's mean/std tables
           (szagoruyko/wide-residual-networks, the torchnet train.lua of v2 and
           scripts/train_cifar.sh): SGD with Nesterov momentum 0.9, dampening 0, lr 0.1,
           weight decay 5e-4 on every parameter, batch 128 (last partial batch dropped),
           200 epochs; lr x0.2 at the start of epochs 60, 120 and 160 (1-indexed: after 59,
           119 and 159 full epochs; the committed log shows epoch 59 at 0.1 and 60 at 0.02),
           and the momentum buffer reset at each drop; 4-pixel reflection pad, 32x32 crop,
           flip, per-channel mean/std; He-normal fan-in convolutions and BN scales drawn from
           U(0, 1) (model presets, resnet_jax/model/presets.py).
Expected:  CIFAR-10 / CIFAR-100 test error, median of 5 runs, mean/std preprocessing, flip and
           translation: WRN-28-10 4.00% / 19.25% (Tables 5 and 6), with dropout 3.89% /
           18.85% (Table 6); WRN-40-4 4.53% / 21.18%, WRN-16-8 4.27% / 20.43% (Table 5).
           With :zca, Table 4 (ZCA whitening, statistic not stated): WRN-28-10 4.17% /
           20.50%, WRN-40-4 4.97% / 22.89%, WRN-16-8 4.81% / 22.07%. (The v1 code behind
           Table 4 also used fan-out initialisation; set --config.model.conv_init=fan_out.)
           :quick as it was before recipes.quick (2 epochs of batch 128 on 5,000 images) on
           ../shared/data/cifar10-jpg.tar.gz: 40.96% test accuracy (measured before the init
           and schedule followed the authors' code); the current :quick has not been measured.
Time:      that earlier :quick took 1 min 27 s on a 2-core CPU (209 img/s, measured). The full
           run is 78,000 steps, not yet measured on a GPU.
"""

from configs import recipes
from resnet_jax import schema
from resnet_jax.model import preset


def get_config(arg=None):
  variants = recipes.parse(arg, ('dropout', 'zca', 'quick'))
  config = schema.default_config()
  config.model = preset('wrn_28_10')
  config.batch_size = 128
  config.num_epochs = 200
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.lr_schedule = 'step'
  config.lr_boundaries_epochs = (59, 119, 159)  # the start of (1-indexed) epochs 60/120/160
  config.lr_decay_factor = 0.2
  config.reset_momentum_at_lr_drops = True
  config.augment.pad_mode = 'reflect'  # the paper pads with reflections
  if variants['dropout']:
    config.model.dropout_rate = 0.3
  if variants['zca']:
    config.dataset.normalization = 'zca'  # resnet_jax/data/preprocessing.py
  if variants['quick']:
    config.model.depth = 16
    config.model.width = 2
    recipes.quick(config)
  return config
