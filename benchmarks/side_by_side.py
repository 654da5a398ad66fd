"""The CPU table of benchmarks/RESULTS.md: resnet_jax's bench mode next to PyTorch.

    python benchmarks/side_by_side.py            # every row (about 20 min on 2 cores)
    python benchmarks/side_by_side.py resnet20   # rows whose name contains 'resnet20'
    python benchmarks/side_by_side.py --no-torch

Each row runs `launch.py --mode=bench` and benchmarks/torch_reference.py (the same network
and step in torch.nn, all cores) in fresh processes, one after the other, and prints a
markdown row. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (row name, launch.py flags, torch_reference.py flags or None)
ROWS = [
    ('resnet20', ['--config=configs/resnet_cifar.py', '--config.batch_size=128'],
     ['--model=resnet20', '--batch_size=128']),
    ('resnet56', ['--config=configs/resnet_cifar.py', '--config.model.depth=56',
                  '--config.batch_size=128'],
     ['--model=resnet56', '--batch_size=128']),
    ('resnet56 scan', ['--config=configs/resnet_cifar.py', '--config.model.depth=56',
                       '--config.batch_size=128', '--config.model.scan_blocks=true'], None),
    ('resnet110', ['--config=configs/resnet_cifar.py', '--config.model.depth=110',
                   '--config.batch_size=128', '--config.bench_steps=5'],
     ['--model=resnet110', '--batch_size=128', '--steps=5']),
    ('wrn-28-10', ['--config=configs/wrn.py', '--config.batch_size=32',
                   '--config.bench_steps=5'],
     ['--model=wrn_28_10', '--batch_size=32', '--steps=5']),
    ('resnet50', ['--config=configs/resnet_imagenet.py', '--config.half_precision=false',
                  '--config.dataset.image_size=128', '--config.batch_size=16'],
     ['--model=resnet50', '--image_size=128', '--batch_size=16', '--num_classes=1000']),
    ('resnet18', ['--config=configs/resnet_imagenet.py', '--config.half_precision=false',
                  '--config.model.depth=18', '--config.model.block=basic',
                  '--config.dataset.image_size=64', '--config.batch_size=32'],
     ['--model=resnet18', '--image_size=64', '--batch_size=32', '--num_classes=1000']),
    ('resnet1202 scan', ['--config=configs/resnet_cifar.py', '--config.model.depth=1202',
                         '--config.batch_size=32', '--config.model.scan_blocks=true',
                         '--config.bench_steps=3'], None),
    ('preact1001 scan', ['--config=configs/preact_cifar.py', '--config.model.depth=1001',
                         '--config.batch_size=32', '--config.model.scan_blocks=true',
                         '--config.bench_steps=3'], None),
]


def _last_json(command: list[str], env: dict) -> dict:
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  with_torch = '--no-torch' not in argv
  wanted = [a for a in argv if not a.startswith('--')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  print('| model | px | batch | img/s | ms/step | compile s (cold) | GFLOP/step | MFU | '
        'torch img/s |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name, flags, torch_flags in ROWS:
    if wanted and not any(w in name for w in wanted):
      continue
    ours = _last_json([sys.executable, 'launch.py', *flags, '--mode=bench'],
                      {**env, 'RESNET_JAX_COMPILATION_CACHE': '0'})
    torch = (_last_json([sys.executable, 'benchmarks/torch_reference.py', *torch_flags], env)
             if with_torch and torch_flags else None)
    torch_cell = f'{torch["img_per_s"]:.1f}' if torch else '-'
    label = ours['model'] + (' (scan)' if 'scan' in name else '')
    print(f'| {label} | {ours["image_size"]} | {ours["batch_size"]} | '
          f'{ours["img_per_s"]:.1f} | {ours["step_time_s"] * 1e3:.0f} | {ours["compile_s"]:.1f} | '
          f'{ours["flops_per_step"] / 1e9:.1f} | {ours["mfu"]:.1%} | {torch_cell} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
