"""Pre-activation ResNet on CIFAR-10, He et al. 2016 (arXiv:1603.05027, Sec. 4 and 5).

Command:   python launch.py --config=configs/preact_cifar.py --workdir=runs/preact164
           ResNet-110 (basic): --config.model.depth=110 --config.model.block=basic
           ResNet-1001:        --config.model.depth=1001
Variants:  :quick  pre-activation ResNet-20 (basic), the plumbing check of configs/recipes.py:
                   2 epochs of batch 32 on 4,096 training images (tests).
Recipe:    as He et al. 2015 ("same as [1]", Appendix): SGD momentum 0.9, weight decay 1e-4,
           batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, 64k iterations, and
           for every CIFAR run lr 0.01 for the first 400 iterations (Appendix: "for all
           CIFAR experiments we warm up ... 400 iterations"). Units as the authors' code
           builds them (KaimingHe/resnet-1k-layers resnet-pre-act.lua, fb.resnet.torch
           models/preresnet.lua): the first unit of each stage shares its BN-ReLU with its
           shortcut; bottlenecks stride their first 1x1; projection shortcuts at the
           bottleneck nets' dimension increases, option A for the basic-block ResNet-110
           (model.shortcut='auto').
Expected:  He et al. 2016, CIFAR-10 test error, median of 5 runs (mean ± std where given),
           pad-crop-flip augmentation: ResNet-110 6.37% (Table 2), ResNet-164 5.46%
           (Tables 2 and 4; CIFAR-100 24.33%), ResNet-1001 4.92% (4.89 ± 0.14; Table 4;
           4.62%, 4.69 ± 0.20, at batch 64). The paper subtracts the per-pixel mean
           (`--config.dataset.normalization=pixel_mean`); the default normalises per
           channel, as the released Torch code does.
           :quick as it was before recipes.quick (2 epochs of batch 128 on 10,000 images)
           on ../shared/data/cifar10-jpg.tar.gz: 42.58% test accuracy (measured before the
           units followed the authors' code); the current :quick has not been measured.
Time:      that earlier :quick took 1 min 10 s on a 2-core CPU (403 img/s, measured);
           the full recipe has not been timed on a GPU yet.
"""

from configs import recipes
from resnet_jax import schema
from resnet_jax.model import preset

HE2016_WARMUP_STEPS = 400  # lr 0.01 for the first 400 iterations, every CIFAR run


def get_config(arg=None):
  variants = recipes.parse(arg, ('quick',))
  config = schema.default_config()
  config.model = preset('preact_resnet164')
  recipes.he_et_al_cifar(config)
  config.constant_warmup_steps = HE2016_WARMUP_STEPS
  if variants['quick']:
    config.model.depth = 20
    config.model.block = 'basic'
    recipes.quick(config)
  return config
