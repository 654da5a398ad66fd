"""PyTorch side of the CPU side-by-side: the same networks, the same training step.

    pip install torch        # the CPU build is enough; torchvision is not needed
    python benchmarks/torch_reference.py --model=resnet18 --image_size=64 --batch_size=32
    python benchmarks/torch_reference.py --model=resnet50 --image_size=128 --batch_size=16
    python benchmarks/torch_reference.py --model=resnet20 --batch_size=128
    # GPU, the issue's reference: torchvision resnet50, channels_last, bf16 autocast, compiled
    python benchmarks/torch_reference.py --model=resnet50 --torchvision --device=cuda \
        --image_size=224 --batch_size=256 --num_classes=1000 --channels_last --bf16 --compile

The networks are written here with torch.nn only, layer for layer as resnet_jax builds them
(and as torchvision builds resnet18/50: same parameter counts, printed). A step is what
resnet_jax's bench times, minus on-device augmentation: forward in training mode (batch
statistics), cross-entropy, backward, SGD with momentum and weight decay, on a fixed
synthetic float batch (on the device). Prints one JSON line like `launch.py --mode=bench`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, shortcut, preact=False, dropout=0.0):
    super().__init__()
    self.preact = preact
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cin if preact else planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
    self.shortcut_kind, self.stride, self.out = shortcut, stride, planes
    changes = stride != 1 or cin != planes
    self.proj = None
    if shortcut == 'B' and changes:
      self.proj = nn.Conv2d(cin, planes, 1, stride, bias=False)
      self.proj_bn = None if preact else nn.BatchNorm2d(planes)

  def _skip(self, x, pre):
    if self.proj is not None:
      return self.proj(pre) if self.preact else self.proj_bn(self.proj(x))
    if self.stride > 1:
      x = x[:, :, ::self.stride, ::self.stride]
    extra = self.out - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2)) if extra else x

  def forward(self, x):
    if self.preact:
      pre = F.relu(self.bn1(x))
      y = self.conv1(pre)
      y = self.conv2(self.dropout(F.relu(self.bn2(y))))
      return y + self._skip(x, pre)
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(self.dropout(y)))
    return F.relu(y + self._skip(x, None))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, shortcut='B', preact=False, dropout=0.0):
    super().__init__()
    out = planes * 4
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.proj = None
    if stride != 1 or cin != out:
      self.proj = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):

  def __init__(self, block, stage_sizes, stage_planes, num_classes, stem, stem_width,
               shortcut, preact=False, dropout=0.0):
    super().__init__()
    self.preact = preact
    if stem == 'imagenet':
      self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(stem_width), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
    elif preact:
      self.stem = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
    else:
      self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(stem_width), nn.ReLU())
    blocks, cin = [], stem_width
    for stage, (n, planes) in enumerate(zip(stage_sizes, stage_planes)):
      for i in range(n):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(block(cin, planes, stride, shortcut, preact, dropout))
        cin = planes * block.expansion
    self.blocks = nn.Sequential(*blocks)
    self.final_bn = nn.BatchNorm2d(cin) if preact else None
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    if self.final_bn is not None:
      x = F.relu(self.final_bn(x))
    return self.head(x.mean((2, 3)))


def build(name: str, num_classes: int, from_torchvision: bool = False) -> nn.Module:
  if from_torchvision:
    import torchvision  # only for the GPU reference; the CPU rows need torch alone
    return getattr(torchvision.models, name)(num_classes=num_classes)
  if name == 'resnet18':
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, 'imagenet', 64, 'B')
  if name == 'resnet50':
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, 'imagenet', 64, 'B')
  if name.startswith('resnet'):  # CIFAR ResNet-(6n+2), option A
    n = (int(name[6:]) - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), num_classes, 'cifar', 16, 'A')
  if name.startswith('wrn_'):  # wrn_<depth>_<k>, pre-activation, option B
    depth, k = map(int, name[4:].split('_'))
    n = (depth - 4) // 6
    return ResNet(BasicBlock, (n, n, n), (16 * k, 32 * k, 64 * k), num_classes, 'cifar', 16, 'B',
                  preact=True)
  raise ValueError(f'unknown model {name}')


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet18')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--warmup_steps', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--channels_last', action='store_true',
                      help='NHWC memory format (torch default: NCHW)')
  parser.add_argument('--threads', type=int, default=0, help='0: torch default (all cores)')
  parser.add_argument('--device', default='cpu', help='cpu or cuda')
  parser.add_argument('--torchvision', action='store_true',
                      help='torchvision.models.<model> instead of the networks written here')
  parser.add_argument('--bf16', action='store_true', help='bf16 autocast (float32 parameters)')
  parser.add_argument('--compile', action='store_true', help='torch.compile the model')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  model = build(args.model, args.num_classes, args.torchvision).train().to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                              nesterov=True)
  images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
  labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  forward = torch.compile(model) if args.compile else model
  synchronize = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
      loss = F.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  compile_start = time.perf_counter()
  for _ in range(args.warmup_steps):
    step()
  synchronize()
  warmup_s = time.perf_counter() - compile_start
  times, cpu_times = [], []
  for _ in range(args.steps):
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    loss = step()
    synchronize()
    times.append(time.perf_counter() - start)
    cpu_times.append(_cpu_seconds() - cpu_start)
  mean = sum(times) / len(times)
  result = {
      'framework': f'torch {torch.__version__}', 'model': args.model,
      'params': sum(p.numel() for p in model.parameters()), 'batch_size': args.batch_size,
      'image_size': args.image_size, 'threads': torch.get_num_threads(),
      'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
      'torchvision': args.torchvision, 'bf16': args.bf16, 'compiled': args.compile,
      'warmup_s': warmup_s, 'channels_last': args.channels_last,
      'img_per_s': args.batch_size / mean,
      'step_time_s': mean, 'best_step_time_s': min(times),
      'cpu_s_per_step': sum(cpu_times) / len(cpu_times), 'loss': float(loss.detach()),
      'peak_memory_bytes': (torch.cuda.max_memory_allocated() if device.type == 'cuda' else
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
