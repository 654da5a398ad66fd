"""Cross-check of a CIFAR recipe: the same network, data, augmentation and optimiser in PyTorch.

    python benchmarks/torch_cifar_recipe.py --data=../shared/data/cifar10-jpg.tar.gz \
        --model=resnet20 --epochs=10

If resnet_jax and PyTorch reach the same test accuracy with the same recipe, the JAX
pipeline (data, augmentation, network, initialisation, optimiser, evaluation) is right and a
shortfall is the recipe's. What is the same as `configs/resnet_cifar.py:cpu` with
`--config.num_epochs=<epochs>`: the decoded images (read through resnet_jax's own loader
and cache), per-channel mean/std of the training split, normalise-then-zero-pad by 4 (the
mean colour) and random 32x32 crop, flip; the network of benchmarks/torch_reference.py with
resnet_jax's initialisation (He normal fan-out convolutions, BN 1/0, Torch's default Linear
weight with a zero bias); SGD with Nesterov momentum 0.9, weight decay 5e-4 on every
parameter added to the gradient, lr 0.1 cosine-decayed per step to 0, batch 128 with the
last partial batch dropped; BN momentum 0.1, eps 1e-5; test accuracy on all 10,000 test
images in eval mode. Data order and random draws are PyTorch's own, so single runs of the
two differ by seed noise. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import torch_reference  # noqa: E402  (the same networks as resnet_jax builds)


def initialise(model: nn.Module) -> None:
  """resnet_jax's initialisation (resnet_jax/model presets for the He et al. family)."""
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
    elif isinstance(module, nn.BatchNorm2d):
      nn.init.ones_(module.weight)
      nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
      bound = 1 / math.sqrt(module.in_features)
      nn.init.uniform_(module.weight, -bound, bound)
      nn.init.zeros_(module.bias)


def load(data: str):
  from resnet_jax import schema
  from resnet_jax.data import in_memory
  dataset_config = schema.default_config().dataset
  dataset_config.name, dataset_config.path = 'cifar10', data
  dataset = in_memory.load(dataset_config)
  mean = torch.tensor(dataset.mean).view(1, 3, 1, 1)
  std = torch.tensor(dataset.std).view(1, 3, 1, 1)

  def tensor(split):
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
    return (images - mean) / std, torch.from_numpy(split.labels.astype(np.int64))

  return tensor(dataset.train), tensor(dataset.test)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
  """Zero-pad by 4 in the normalised space, random 32x32 crop per image, random flip."""
  n = images.shape[0]
  padded = F.pad(images, (4, 4, 4, 4))
  offsets = torch.randint(0, 9, (n, 2), generator=generator)
  rows = offsets[:, 0, None] + torch.arange(32)
  cols = offsets[:, 1, None] + torch.arange(32)
  crops = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
  flip = torch.rand(n, generator=generator) < 0.5
  crops[flip] = crops[flip].flip(-1)
  return crops


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--learning_rate', type=float, default=0.1)
  parser.add_argument('--weight_decay', type=float, default=5e-4)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  torch.manual_seed(args.seed)
  generator = torch.Generator().manual_seed(args.seed)
  (train_x, train_y), (test_x, test_y) = load(args.data)
  model = torch_reference.build(args.model, 10)
  initialise(model)
  optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9,
                              nesterov=True, weight_decay=args.weight_decay)
  steps_per_epoch = len(train_y) // args.batch_size
  total = max(args.epochs * steps_per_epoch, 1)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
  start = time.time()
  for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(len(train_y), generator=generator)
    for step in range(steps_per_epoch):
      index = order[step * args.batch_size:(step + 1) * args.batch_size]
      loss = F.cross_entropy(model(augment(train_x[index], generator)), train_y[index])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      schedule.step()
  model.eval()
  correct = 0
  with torch.no_grad():
    for first in range(0, len(test_y), 1000):
      logits = model(test_x[first:first + 1000])
      correct += int((logits.argmax(-1) == test_y[first:first + 1000]).sum())
  print(json.dumps({'framework': f'torch {torch.__version__}', 'model': args.model,
                    'epochs': args.epochs, 'seed': args.seed,
                    'test_accuracy': correct / len(test_y), 'train_loss': float(loss),
                    'wall_s': time.time() - start}))


if __name__ == '__main__':
  main()
