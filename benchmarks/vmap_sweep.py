"""Vmapped sweep groups against the same runs one by one: the README's vmap figures.

    python benchmarks/vmap_sweep.py [--data=PATH] [--depth=20] [--group=4] [--steps=10]

Times `--group` seeds of a CIFAR ResNet trained one by one and as one vmapped program
(resnet_jax/sweeps/vmapped.py `measure`: the real train steps, compilation excluded, the two
timed alternately); prints one JSON object. Synthetic CIFAR-shaped data unless --data
names a CIFAR-10 archive or folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_jax import schema, sweeps  # noqa: E402
from resnet_jax.sweeps import spec, vmapped  # noqa: E402


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=vmapped.measure.__doc__.splitlines()[0])
  parser.add_argument('--data', default='', help='CIFAR-10 archive or folder; default synthetic')
  parser.add_argument('--depth', type=int, default=20)
  parser.add_argument('--width', type=int, default=1)
  parser.add_argument('--group', type=int, default=4)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  config = schema.default_config()
  config.model.depth, config.model.width = args.depth, args.width
  config.batch_size = args.batch
  if args.data:
    config.dataset.path = args.data
  else:
    config.dataset.name, config.dataset.num_classes = 'synthetic', 10
    config.dataset.max_train_examples = 4 * args.batch
  runs = spec.expand(config, sweeps.axis('seed', list(range(args.group))), '/nonexistent')
  print(json.dumps(vmapped.measure(runs, args.steps, args.repeats), indent=1))


if __name__ == '__main__':
  main()
