"""Pre-activation ResNet on CIFAR-10, He et al. 2016 (arXiv:1603.05027, Sec. 4 and 5).

Command:   python launch.py --config=configs/preact_cifar.py --workdir=runs/preact164
           ResNet-110 (basic): --config.model.depth=110 --config.model.block=basic
           ResNet-1001:        --config.model.depth=1001
Variants:  :quick  pre-activation ResNet-20 (basic), 2 epochs on 10,000 images (CPU).
Recipe:    as He et al. 2015: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided
           by 10 at 32k and 48k iterations, 64k iterations; projection shortcuts where the
           shape changes; 110 layers and deeper hold lr at 0.01 for the first 400 iterations.
Expected:  test error (paper Tables 2-3): ResNet-110 6.37%, ResNet-164 5.46%, ResNet-1001 4.92%.
           :quick on ../shared/data/cifar10-jpg.tar.gz: 42.58% test accuracy (measured).
Time:      :quick 1 min 10 s on a 2-core CPU (403 img/s, measured);
           the full recipe has not been timed on a GPU yet.
"""

from resnet_jax import config as config_lib
from resnet_jax import presets


def get_config(arg=None):
  variants = config_lib.variants(arg, ('quick',))
  config = config_lib.default_config()
  config.model = presets.preset('preact_resnet164')
  config_lib.he_et_al_cifar_recipe(config, quick='quick' in variants)
  if 'quick' in variants:
    config.model.depth = 20
    config.model.block = 'basic'
  return config
