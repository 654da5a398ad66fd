"""ResNet-50 on ImageNet: torchvision's reference recipe on fb.resnet.torch's schedule;
`:he2015`, the augmentation and 10-crop testing of He et al. 2015 (arXiv:1512.03385).

Command:   python launch.py --config=configs/resnet_imagenet.py \
               --config.dataset.path=<tfds data_dir holding imagenet2012> --workdir=runs/r50
           other depths: --config.model.depth=101 ; wide: --config.model.width=2
Variants:  :he2015  He et al. 2015, Sec. 3.4: the shorter side resized to a size drawn from
                    [256, 480], a random 224 crop and flip; AlexNet PCA colour noise (std 0.1,
                    fb.resnet.torch datasets/imagenet.lua Lighting(0.1, eigval, eigvec));
                    10-crop evaluation (four corners and centre of the image resized to 256,
                    and their mirrors; logits averaged); stride on the first 1x1 of each
                    bottleneck, as the paper's (Caffe) ResNet-50 had it.
           :quick   ResNet-18 at 64 px on synthetic data, the plumbing check of
                    configs/recipes.py: 2 epochs of batch 32 on 4,096 images (CPU).
Recipe:    SGD momentum 0.9 (no Nesterov), weight decay 1e-4 on every parameter, batch 256
           with lr 0.1 (scale both together), lr divided by 10 at epochs 30 and 60, 90 epochs:
           fb.resnet.torch train.lua (decay = floor((epoch - 1) / 30)), which torchvision's
           references/classification (--lr-step-size 30) repeats. Training: random-resized
           crop (area 8-100%, aspect 3/4-4/3) to 224 and flip; evaluation: the centre 224 of
           the image resized to 256; ImageNet's per-channel mean/std; bf16 compute.
           fb.resnet.torch's own recipe (datasets/imagenet.lua) adds colour jitter (0.4, not
           implemented here) and PCA lighting (--config.augment.pca_noise=0.1), and uses
           Nesterov momentum. :he2015 keeps this schedule: the paper divides the lr by 10
           "when the error plateaus" over up to 60e4 iterations (about 120 epochs at batch
           256) without naming the epochs; and its "per-pixel mean subtracted" becomes the
           per-channel mean/std here.
Expected:  top-1 accuracy, ImageNet validation: about 76% single-crop 224 (torchvision's
           resnet50 IMAGENET1K_V1 weights, trained with this recipe: 76.13% top-1, 92.86%
           top-5). :he2015: He et al. 2015 Table 3, ResNet-50 (option B), 10-crop
           validation error 22.85% top-1, 6.71% top-5.
Time:      not measured on ImageNet; input decoding dominates (see README for step throughput).
"""

from configs import recipes
from resnet_jax import schema
from resnet_jax.model import preset


def get_config(arg=None):
  variants = recipes.parse(arg, ('he2015', 'quick'))
  config = schema.default_config()
  config.model = preset('resnet50')
  config.dataset.name = 'imagenet2012'
  config.dataset.image_size = 224
  config.dataset.normalization = 'imagenet'
  config.augment.crop_padding = 0  # the crops happen in the input pipeline
  config.augment.train_crop = 'random_resized'
  config.batch_size = 256
  config.eval_batch_size = 500
  config.num_epochs = 90
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.lr_schedule = 'step'
  config.lr_boundaries_epochs = (30, 60)
  config.lr_decay_factor = 0.1
  config.half_precision = True
  config.checkpoint_every_steps = 5_000
  if variants['he2015']:
    config.model.bottleneck_stride = 'first_1x1'
    config.augment.train_crop = 'scale'
    config.augment.scale_range = (256, 480)
    config.augment.pca_noise = 0.1
    config.augment.eval_crops = 10
    config.eval_batch_size = 100  # examples: each is 10 crops through the network
  if variants['quick']:
    config.model = preset('resnet18')
    config.dataset.name = 'synthetic'
    config.dataset.num_classes = 10
    config.dataset.image_size = 64
    config.dataset.normalization = 'dataset'
    config.augment.crop_padding = 4
    config.augment.train_crop = 'random_resized'
    config.augment.pca_noise = 0.0
    config.augment.eval_crops = 1
    config.eval_batch_size = 64
    config.half_precision = False
    recipes.quick(config)
  return config
