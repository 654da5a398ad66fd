"""The 'each form switched off alone' table of benchmarks/RESULTS.md.

    python benchmarks/cpu_forms_ablation.py resnet18 max_pool
    python benchmarks/cpu_forms_ablation.py resnet56_scan canonical_backward

Models: resnet18 (64 px, batch 32, float32), resnet<depth> (CIFAR, batch 128), and
resnet<depth>_scan (scanned stages). Forms: none, matmul_conv, canonical_backward,
all_conv_forms, batch_norm, max_pool, fusion_barrier. The form is replaced in
resnet_jax.model.cpu_ops.CPU by the plain XLA / Flax operation before the model is built, then the
train step is timed as `launch.py --mode=bench` times it, under the XLA:CPU settings
launch.py applies (resnet_jax/cpu_settings.py; RESNET_JAX_CPU_SETTINGS=xla_defaults for
XLA's own). Prints one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import dataclasses

from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_jax import cpu_settings  # noqa: E402

CHOICE = cpu_settings.apply()  # before anything starts JAX's backend, as launch.py does

from resnet_jax import bench  # noqa: E402
from resnet_jax.model import cpu_ops  # noqa: E402

_plain_conv = lambda lhs, rhs, strides, padding, **_: lax.conv_general_dilated(
    lhs, rhs, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
_ours = cpu_ops.conv_general_dilated


def _without_matmul(lhs, rhs, strides, padding, **kwargs):
  """Every conv the explicit-backward XLA conv, none a matmul."""
  (rhs,) = cpu_ops._as_varying_like(lhs, rhs)  # as cpu_ops.conv_general_dilated does
  return cpu_ops._canonical_conv(lhs, rhs, tuple(strides), tuple(map(tuple, padding)))


def _without_canonical_backward(lhs, rhs, strides, padding, **kwargs):
  """Matmul convs kept; the others with autodiff's backward."""
  kernel = rhs.shape[0]
  (top, bottom), _ = padding
  out = (lhs.shape[1] + top + bottom - kernel) // strides[0] + 1
  if kernel == 1 or kernel * kernel > min(lhs.shape[1] * lhs.shape[2], out * out):
    return _ours(lhs, rhs, strides, padding, **kwargs)
  return _plain_conv(lhs, rhs, strides, padding)


def _switch_off(**plain) -> None:
  """The CPU forms with `plain` of them replaced, as build_model will pick them."""
  cpu_ops.CPU = dataclasses.replace(cpu_ops.CPU, **plain)


SWITCH_OFF = {
    'none': lambda: None,
    'matmul_conv': lambda: _switch_off(conv_general_dilated=_without_matmul),
    'canonical_backward': lambda: _switch_off(conv_general_dilated=_without_canonical_backward),
    'all_conv_forms': lambda: _switch_off(conv_general_dilated=_plain_conv),
    'batch_norm': lambda: _switch_off(batch_norm=cpu_ops.XLA.batch_norm),
    'max_pool': lambda: _switch_off(max_pool=cpu_ops.XLA.max_pool),
    'fusion_barrier': lambda: _switch_off(fusion_barrier=cpu_ops.XLA.fusion_barrier),
}


def config_for(model: str):
  """The config launch.py builds for the README's bench rows (see the module docstring)."""
  name = 'resnet_imagenet' if model == 'resnet18' else 'resnet_cifar'
  spec = importlib.util.spec_from_file_location(name, ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if model == 'resnet18':
    config.half_precision = False
    config.model.depth, config.model.block = 18, 'basic'
    config.dataset.image_size, config.batch_size = 64, 32
  else:
    depth, _, scan = model.removeprefix('resnet').partition('_')
    config.model.depth, config.model.scan_blocks = int(depth), scan == 'scan'
    config.batch_size = 128
  return config


def main(argv: list[str]) -> None:
  model, form = argv
  if form not in SWITCH_OFF:
    raise SystemExit(f'unknown form {form!r}; choose from {", ".join(SWITCH_OFF)}')
  SWITCH_OFF[form]()
  result = bench.measure(config_for(model))
  settings = (CHOICE or {}).get('name', 'off')
  print(json.dumps({'model': model, 'switched_off': form, 'xla_cpu_settings': settings,
                    'img_per_s': round(result['img_per_s'], 1)}))


if __name__ == '__main__':
  main(sys.argv[1:])
