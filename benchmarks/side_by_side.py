"""The CPU table of benchmarks/RESULTS.md: resnet_jax's bench mode next to PyTorch.

    python benchmarks/side_by_side.py            # every row (about 30 min on 2 cores)
    python benchmarks/side_by_side.py resnet20   # rows whose name contains 'resnet20'
    python benchmarks/side_by_side.py --no-torch
    python benchmarks/side_by_side.py --flax_models_py=<flax>/examples/imagenet/models.py

First it prints the processor and the XLA:CPU settings chosen for it
(resnet_jax/cpu_settings.py, measured once per processor and jax version). Then each row
runs `launch.py --mode=bench` twice, with XLA's own defaults and with the chosen settings,
and benchmarks/torch_reference.py (the same network and step in torch.nn, all cores), in
fresh processes one after the other, and prints a markdown row with the ratio of the
chosen settings to torch. With --flax_models_py the ResNet-50 row also times the Flax
ImageNet example's model and step (benchmarks/flax_example.py). Nothing else should run on
the machine meanwhile.
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


# The Flax example's model for the rows that have one, and its flags.
FLAX_ROWS = {'resnet50': ['--model=ResNet50', '--image_size=128', '--batch_size=16'],
             'resnet18': ['--model=ResNet18', '--image_size=64', '--batch_size=32']}


def main(argv: list[str]) -> None:
  with_torch = '--no-torch' not in argv
  flax_models = next((a.split('=', 1)[1] for a in argv if a.startswith('--flax_models_py=')), None)
  wanted = [a for a in argv if not a.startswith('--')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  chosen = subprocess.run([sys.executable, '-m', 'resnet_jax.cpu_settings'], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
  from resnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  processor = cpu_settings.processor()
  print(f'processor: {processor["model"]} ({processor["extensions"]}), {processor["cores"]} '
        f'cores; jax {processor["jax"]}')
  print(chosen.splitlines()[-1])
  print()
  print('| model | px | batch | img/s, XLA defaults | img/s, chosen | ms/step | compile s (cold) '
        '| GFLOP/step | MFU | torch img/s | chosen / torch | Flax example img/s |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  bench = lambda flags, setting: _last_json(
      [sys.executable, 'launch.py', *flags, '--mode=bench'],
      {**env, 'RESNET_JAX_COMPILATION_CACHE': '0', **setting})
  for name, flags, torch_flags in ROWS:
    if wanted and not any(w in name for w in wanted):
      continue
    defaults = bench(flags, {'RESNET_JAX_CPU_SETTINGS': 'xla_defaults'})
    ours = bench(flags, {})
    torch = (_last_json([sys.executable, 'benchmarks/torch_reference.py', *torch_flags], env)
             if with_torch and torch_flags else None)
    flax = (_last_json([sys.executable, 'benchmarks/flax_example.py',
                        f'--models_py={flax_models}', *FLAX_ROWS[name]], env)
            if flax_models and name in FLAX_ROWS else None)
    torch_cell = f'{torch["img_per_s"]:.1f}' if torch else '-'
    ratio = f'{ours["img_per_s"] / torch["img_per_s"]:.2f}x' if torch else '-'
    flax_cell = (f'{flax["img_per_s"]:.1f} ({ours["img_per_s"] / flax["img_per_s"]:.1f}x)'
                 if flax else '-')
    label = ours['model'] + (' (scan)' if 'scan' in name else '')
    print(f'| {label} | {ours["image_size"]} | {ours["batch_size"]} | '
          f'{defaults["img_per_s"]:.1f} | {ours["img_per_s"]:.1f} | '
          f'{ours["step_time_s"] * 1e3:.0f} | {ours["compile_s"]:.1f} | '
          f'{ours["flops_per_step"] / 1e9:.1f} | {ours["mfu"]:.1%} | {torch_cell} | {ratio} | '
          f'{flax_cell} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
