"""Every GPU figure issue 5 asks for, in one command, on the GPU it runs on.

    python benchmarks/gpu_targets.py --data=../shared/data/cifar10-jpg.tar.gz
    python benchmarks/gpu_targets.py --smoke        # tiny shapes: checks the script, on CPU

Rows (bf16 unless said): WRN-28-10 and ResNet-20/56 throughput; ResNet-50 at 224 px next to
torchvision's resnet50 (channels_last, bf16 autocast, torch.compile) in the same session;
WRN-28-10 compile time cold, then from the persistent cache; ResNet-1202 (scanned stages)
compile time and peak memory at batch 128; and, with --data, the wall time of ResNet-20's
full CIFAR recipe (64k iterations, batch 128). Each row runs in a fresh process; a row that
fails prints its error and the others go on. Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRN = ['--config=configs/wrn.py', '--config.batch_size=128']
RESNET20 = ['--config=configs/resnet_cifar.py', '--config.batch_size=128']
RESNET50 = ['--config=configs/resnet_imagenet.py', '--config.dataset.image_size=224',
            '--config.batch_size=256']
RESNET1202 = ['--config=configs/resnet_cifar.py', '--config.model.depth=1202',
              '--config.model.scan_blocks=true', '--config.batch_size=128']
SMOKE = ['--config.batch_size=8', '--config.dataset.image_size=32', '--config.bench_steps=1',
         '--config.bench_warmup_steps=1']


def _run(command: list[str], env: dict) -> tuple[dict | None, float, str]:
  """(last JSON line or None, wall seconds, error tail)."""
  start = time.perf_counter()
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    return None, wall, (out.stdout + out.stderr).strip().splitlines()[-1:]
  lines = out.stdout.strip().splitlines()
  return (json.loads(lines[-1]) if lines and lines[-1].startswith('{') else {}), wall, ''


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default='', help='CIFAR-10 for the full ResNet-20 run')
  parser.add_argument('--smoke', action='store_true', help='tiny shapes, one step (CPU check)')
  args = parser.parse_args(argv)
  shrink = SMOKE if args.smoke else []
  cache = Path(tempfile.mkdtemp(prefix='resnet_jax_cache_'))
  env = {**os.environ, 'RESNET_JAX_CACHE': str(cache)}
  cold = {**env, 'RESNET_JAX_COMPILATION_CACHE': '0'}
  bf16 = ['--config.half_precision=true']
  bench = lambda flags: [sys.executable, 'launch.py', '--mode=bench', *flags, *bf16, *shrink]
  # Smoke: the same ResNet-50 written in torch.nn (torchvision need not match torch on CPU).
  torch_shape = (['--image_size=32', '--batch_size=8', '--steps=1', '--warmup_steps=1']
                 if args.smoke else
                 ['--image_size=224', '--batch_size=256', '--torchvision', '--device=cuda'])
  rows = [
      ('wrn-28-10 b128', bench(WRN), cold),
      ('resnet20 b128', bench(RESNET20), cold),
      ('resnet56 b128', bench([*RESNET20, '--config.model.depth=56']), cold),
      ('resnet50 224px b256', bench(RESNET50), cold),
      ('torchvision resnet50 224px b256 (channels_last, bf16, compiled)',
       [sys.executable, 'benchmarks/torch_reference.py', '--model=resnet50',
        '--num_classes=1000', '--channels_last', '--bf16', '--compile', *torch_shape],
       env),
      ('wrn-28-10 compile, cold cache', bench(WRN), env),
      ('wrn-28-10 compile, from the cache', bench(WRN), env),
      ('resnet1202 (scan) b128', bench(RESNET1202), cold),
  ]
  if args.data:
    steps = ['--config.num_train_steps=2'] if args.smoke else []
    rows.append(('resnet20 full recipe (64k iterations)',
                 [sys.executable, 'launch.py', *RESNET20, *bf16, *steps,
                  f'--config.dataset.path={args.data}', f'--workdir={cache / "resnet20"}'], env))

  print('| row | img/s | compile s | peak memory GiB | MFU | wall s |')
  print('|---|---|---|---|---|---|')
  results = {}
  for name, command, row_env in rows:
    result, wall, error = _run(command, row_env)
    results[name] = {**(result or {}), 'wall_s': wall, 'error': error}
    if result is None:
      print(f'| {name} | failed: {error} | | | | {wall:.0f} |', flush=True)
      continue
    cell = lambda key, fmt: format(result[key], fmt) if result.get(key) is not None else '-'
    memory = (f'{result["peak_memory_bytes"] / 2**30:.2f}'
              if result.get('peak_memory_bytes') else '-')
    compile_s = cell('compile_s', '.1f') if 'compile_s' in result else cell('warmup_s', '.1f')
    print(f'| {name} | {cell("img_per_s", ",.0f")} | {compile_s} | {memory} | '
          f'{cell("mfu", ".1%")} | {wall:.0f} |', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
