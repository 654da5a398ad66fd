"""Fine-tune torchvision ImageNet weights (converted) on CIFAR-10 or an image folder.

Command:   python -m resnet_jax.convert --arch=resnet50 --weights=resnet50-0676ba61.pth \
               --out=weights/resnet50
           python launch.py --config=configs/finetune.py --config.init_from=weights/resnet50 \
               --workdir=runs/finetune_r50
           an image-folder dataset: --config.dataset.name=folder \
               --config.dataset.path=<dir or .tar.gz with train/<class>/... and test/<class>/...>
Variants:  :linear_probe  train only a new head on frozen features (BN in inference mode)
           :frozen_bn     train every weight, but keep BN's running statistics fixed
           :quick         ResNet-18 at 64 px, the plumbing check of configs/recipes.py:
                          2 epochs of batch 32 on 4,096 images at lr 0.05 (CPU)
           default: full fine-tuning. Combine with commas, e.g. :linear_probe,quick
Recipe:    the head is replaced for the new class count; 32 px inputs are resized on the
           device to 224 (augment.resize_to); inputs are normalised with ImageNet's mean/std,
           which the torchvision weights expect; SGD momentum 0.9, lr 0.01 (0.1 for a
           linear probe), weight decay 1e-4 on kernels only, cosine over 10 epochs, batch 64.
Expected:  ResNet-50 full fine-tuning on CIFAR-10 reaches about 97% (Kornblith et al. 2019
           report 97-98% at 224 px); a linear probe about 88-90%.
Time:      dominated by the 224 px forward/backward; see README for measured throughput.
"""

from configs import recipes
from resnet_jax import schema
from resnet_jax.model import preset


def get_config(arg=None):
  variants = recipes.parse(arg, ('linear_probe', 'frozen_bn', 'quick'))
  config = schema.default_config()
  config.model = preset('resnet50')
  config.dataset.normalization = 'imagenet'
  config.augment.resize_to = 224
  config.batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 10
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.decay_bn_and_bias = False
  config.lr_schedule = 'cosine'
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  if variants['linear_probe']:
    config.finetune_mode = 'linear_probe'
    config.learning_rate = 0.1
  if variants['frozen_bn']:
    config.finetune_mode = 'frozen_bn'
  if variants['quick']:
    config.model = preset('resnet18')
    config.augment.resize_to = 64
    recipes.quick(config)
  return config
