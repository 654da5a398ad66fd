"""ResNet-50 on ImageNet (He et al. 2015, arXiv:1512.03385, Sec. 3.4; torchvision layout).

Command:   python launch.py --config=configs/resnet_imagenet.py \
               --config.dataset.path=<tfds data_dir holding imagenet2012> --workdir=runs/r50
           other depths: --config.model.depth=101 ; wide: --config.model.width=2
Variants:  :quick  ResNet-18 at 64 px on synthetic data, 20 steps (CPU smoke run).
Recipe:    SGD momentum 0.9, weight decay 1e-4, batch 256 with lr 0.1 (scale both together),
           lr divided by 10 at epochs 30, 60 and 80, 90 epochs; random-resized crop to 224
           and flip for training, resize + centre crop for evaluation; bf16 compute.
Expected:  top-1 about 76% (torchvision's resnet50 weights: 76.13%).
Time:      dominated by input decoding; see README for measured step throughput.
"""

from resnet_jax import config as config_lib
from resnet_jax import presets


def get_config(arg=None):
  variants = config_lib.variants(arg, ('quick',))
  config = config_lib.default_config()
  config.model = presets.preset('resnet50')
  config.dataset.name = 'imagenet2012'
  config.dataset.image_size = 224
  config.augment.crop_padding = 0  # random-resized crop happens in the input pipeline
  config.batch_size = 256
  config.eval_batch_size = 500
  config.num_epochs = 90
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.lr_schedule = 'step'
  config.lr_boundaries_epochs = (30, 60, 80)
  config.lr_decay_factor = 0.1
  config.half_precision = True
  config.checkpoint_every_steps = 5_000
  if 'quick' in variants:
    config.model = presets.preset('resnet18')
    config.dataset.name = 'synthetic'
    config.dataset.num_classes = 10
    config.dataset.image_size = 64
    config.dataset.max_train_examples = 640
    config.augment.crop_padding = 4
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 1
    config.half_precision = False
    config.lr_schedule = 'cosine'
    config.log_every_steps = 5
    config.checkpoint_every_steps = 20
  return config
