"""Fine-tune torchvision ImageNet weights (converted) on CIFAR-10 or an image folder.

Command:   python -m resnet_jax.convert --arch=resnet50 --weights=resnet50-0676ba61.pth \
               --out=weights/resnet50
           python launch.py --config=configs/finetune.py --config.init_from=weights/resnet50 \
               --workdir=runs/finetune_r50
           an image-folder dataset: --config.dataset.name=folder \
               --config.dataset.path=<dir or .tar.gz with train/<class>/... and test/<class>/...>
Variants:  :linear_probe  train only a new head on frozen features (BN in inference mode)
           :frozen_bn     train every weight, but keep BN's running statistics fixed
           :quick         ResNet-18, 1 epoch on 2,000 images at 64 px (CPU)
           default: full fine-tuning. Combine with commas, e.g. :linear_probe,quick
Recipe:    the head is replaced for the new class count; 32 px inputs are resized on the
           device to 224 (augment.resize_to); inputs are normalised with ImageNet's mean/std,
           which the torchvision weights expect; SGD momentum 0.9, lr 0.01 (0.1 for a
           linear probe), weight decay 1e-4 on kernels only, cosine over 10 epochs, batch 64.
Expected:  ResNet-50 full fine-tuning on CIFAR-10 reaches about 97% (Kornblith et al. 2019
           report 97-98% at 224 px); a linear probe about 88-90%.
Time:      dominated by the 224 px forward/backward; see README for measured throughput.
"""

from resnet_jax import config as config_lib
from resnet_jax.model import preset


def get_config(arg=None):
  variants = config_lib.variants(arg, ('linear_probe', 'frozen_bn', 'quick'))
  config = config_lib.default_config()
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
  if 'linear_probe' in variants:
    config.finetune_mode = 'linear_probe'
    config.learning_rate = 0.1
  if 'frozen_bn' in variants:
    config.finetune_mode = 'frozen_bn'
  if 'quick' in variants:
    config.model = preset('resnet18')
    config.dataset.max_train_examples = 2_000
    config.augment.resize_to = 64
    config.num_epochs = 1
    config.log_every_steps = 5
  return config
