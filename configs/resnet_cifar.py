"""ResNet on CIFAR-10, the recipe of He et al. 2015 (arXiv:1512.03385, Sec. 4.2).

Command:   python launch.py --config=configs/resnet_cifar.py --workdir=runs/resnet20
           depth and shortcut: --config.model.depth=56 --config.model.shortcut=B
           the plain twin:     --config.model.shortcut=none
Variants:  :quick  ResNet-20, 2 epochs on 10,000 training images, full test split (CPU).
Recipe:    SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and
           48k iterations, 64k iterations (110 layers and deeper: lr 0.01 for the first 400);
           4-pixel pad, 32x32 crop, flip; option A shortcuts.
           (The paper trains on 45k images and validates on 5k; this trains on all 50k.)
Expected:  test error (paper Table 6): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%,
           110 6.43%, 1202 7.93%. :quick on ../shared/data/cifar10-jpg.tar.gz: 38.64% test
           accuracy (measured; 10% is chance).
Time:      :quick 1 min 16 s on a 2-core CPU (399 img/s, measured); the full recipe has not
           been timed on a GPU yet.
"""

from resnet_jax import config as config_lib
from resnet_jax import presets


def get_config(arg=None):
  variants = config_lib.variants(arg, ('quick',))
  config = config_lib.default_config()
  config.model = presets.preset('resnet20')
  config_lib.he_et_al_cifar_recipe(config, quick='quick' in variants)
  return config
