"""Named architectures as data, and the one place a model config becomes a `ResNet`.

A model config (`config.model`) holds a handful of keys; `architecture()` checks them
and turns them into `ResNet` arguments. Adding a named variant is one line in `PRESETS`.

Depth conventions, as each paper counts layers:
* 'cifar'    (He et al. 2015, Sec. 4.2): depth = 6n+2 (basic) or 9n+2 (bottleneck),
             n blocks per stage, widths 16k/32k/64k after a 16-channel 3x3 stem.
* 'wrn'      (Zagoruyko & Komodakis 2016, Table 1): WRN-d-k, depth = 6n+4, widths
             16, 16k, 32k, 64k, pre-activation basic blocks.
* 'imagenet' (He et al. 2015, Table 1): ResNet-18/34/50/101/152(/200), 7x7 stem and
             max-pool, widths 64/128/256/512; width k widens the bottleneck's inner
             convolutions (torchvision's wide_resnet50_2 is k=2).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from resnet_jax import models

FAMILIES = ('cifar', 'wrn', 'imagenet')
IMAGENET_STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line naming the allowed values."""


def default_model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      family='cifar',  # 'cifar' | 'wrn' | 'imagenet': sets the depth rule, stem and widths
      depth=20,
      width=1,  # width factor k
      block='basic',  # 'basic' | 'bottleneck'
      shortcut='A',  # 'A' | 'B' | 'C' | 'none' (the plain twin)
      preact=False,  # full pre-activation (He et al. 2016)
      dropout_rate=0.0,  # between the convolutions (WRN)
      zero_init_residual=False,  # zero-init the last BN scale of each residual branch
      post_add_activation=True,  # post-activation blocks: ReLU after the addition
      stride_on_first_1x1=False,  # bottleneck: stride on the first 1x1 (2015 paper) not the 3x3
      scan_blocks=False,  # scan each stage's repeated blocks: fast compiles of very deep nets
      remat_blocks=False,  # recompute block activations in the backward pass: less memory
  ))


PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2015, CIFAR-10 (Table 6): option A shortcuts; the plain twins drop them.
    **{f'resnet{d}': dict(depth=d) for d in (20, 32, 44, 56, 110, 1202)},
    **{f'plain{d}': dict(depth=d, shortcut='none') for d in (20, 32, 44, 56, 110)},
    # He et al. 2016, CIFAR (Table 2-3): projection shortcuts where the shape changes.
    'preact_resnet110': dict(depth=110, preact=True, shortcut='B'),
    'preact_resnet164': dict(depth=164, block='bottleneck', preact=True, shortcut='B'),
    'preact_resnet1001': dict(depth=1001, block='bottleneck', preact=True, shortcut='B'),
    # Zagoruyko & Komodakis 2016 (Tables 4-5).
    **{f'wrn_{d}_{k}': dict(family='wrn', depth=d, width=k, preact=True, shortcut='B')
       for d, k in ((16, 4), (16, 8), (16, 10), (22, 8), (28, 10), (40, 4), (40, 10))},
    # He et al. 2015, ImageNet (Table 1), torchvision layout (stride on the 3x3).
    **{f'resnet{d}': dict(family='imagenet', depth=d, block=IMAGENET_STAGES[d][0], shortcut='B')
       for d in (18, 34, 50, 101, 152)},
    'wide_resnet50_2': dict(family='imagenet', depth=50, width=2, block='bottleneck', shortcut='B'),
    'wide_resnet101_2': dict(family='imagenet', depth=101, width=2, block='bottleneck',
                             shortcut='B'),
}


def preset(name: str) -> ml_collections.ConfigDict:
  """The full model config of a named architecture."""
  if name not in PRESETS:
    raise ConfigError(f'unknown model preset {name!r}; known: {", ".join(sorted(PRESETS))}')
  config = default_model_config()
  config.update(PRESETS[name])
  return config


def _choice(key: str, value, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f'model.{key}={value!r} is not valid; allowed: '
                      f'{", ".join(repr(a) for a in allowed)}')


def _blocks_per_stage(family: str, depth: int, block: str) -> tuple[int, ...]:
  if family == 'imagenet':
    if depth not in IMAGENET_STAGES:
      raise ConfigError(f'model.depth={depth} is not an ImageNet ResNet depth; allowed: '
                        f'{", ".join(map(str, IMAGENET_STAGES))}')
    expected_block, stage_sizes = IMAGENET_STAGES[depth]
    if block != expected_block:
      raise ConfigError(f'ResNet-{depth} uses model.block={expected_block!r}, not {block!r}; '
                        f'set model.block={expected_block}')
    return stage_sizes
  if family == 'wrn':
    if block != 'basic':
      raise ConfigError("Wide ResNets use model.block='basic'; set model.block=basic")
    offset, per_block, rule = 4, 6, 'WRN depth must be 6n+4 (16, 22, 28, 40, ...)'
  elif block == 'basic':
    offset, per_block, rule = 2, 6, 'CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...)'
  else:
    offset, per_block, rule = 2, 9, 'CIFAR bottleneck depth must be 9n+2 (164, 1001, ...)'
  n, remainder = divmod(depth - offset, per_block)
  if remainder or n < 1:
    raise ConfigError(f'model.depth={depth} is not valid: {rule}')
  return (n, n, n)


def architecture(model_config) -> dict[str, Any]:
  """Checks a model config and returns the matching `ResNet` keyword arguments."""
  cfg = default_model_config()
  unknown = set(model_config.keys()) - set(cfg.keys())
  if unknown:
    raise ConfigError(f'unknown model key(s) {sorted(unknown)}; allowed: {sorted(cfg.keys())}')
  cfg.update(dict(model_config))
  _choice('family', cfg.family, FAMILIES)
  _choice('block', cfg.block, models.BLOCKS)
  _choice('shortcut', cfg.shortcut, models.SHORTCUTS)
  if not isinstance(cfg.width, int) or cfg.width < 1:
    raise ConfigError(f'model.width={cfg.width!r} is not valid: the width factor k must be an '
                      'integer >= 1')
  if not 0.0 <= cfg.dropout_rate < 1.0:
    raise ConfigError(f'model.dropout_rate={cfg.dropout_rate} is not valid: use 0 <= rate < 1')
  stage_sizes = _blocks_per_stage(cfg.family, cfg.depth, cfg.block)
  # Basic blocks widen as a whole (WRN); bottlenecks widen only their inner convolutions
  # (WRN Sec. 2, torchvision's wide_resnet50_2).
  widen = 1 if cfg.block == 'bottleneck' else cfg.width
  if cfg.family == 'imagenet':
    stem, stem_width, base_planes = 'imagenet', 64, (64, 128, 256, 512)
  else:
    stem, stem_width, base_planes = 'cifar', 16, (16, 32, 64)
  stage_planes = tuple(p * widen for p in base_planes)
  return dict(
      stage_sizes=stage_sizes, stage_planes=stage_planes, block=cfg.block, stem=stem,
      stem_width=stem_width, shortcut=cfg.shortcut, preact=cfg.preact,
      width=cfg.width if cfg.block == 'bottleneck' else 1,
      stride_on_first_1x1=cfg.stride_on_first_1x1, post_add_activation=cfg.post_add_activation,
      zero_init_residual=cfg.zero_init_residual, dropout_rate=float(cfg.dropout_rate),
      scan_blocks=bool(cfg.scan_blocks), remat_blocks=bool(cfg.remat_blocks))


def unrolled(model_config) -> ml_collections.ConfigDict:
  """A copy of model_config with every block its own layer, kept in the backward pass.

  scan_blocks and remat_blocks change how the network runs, not what it computes: this is
  the network to count (XLA counts a scan's body once) and to compare weights against.
  """
  plain = ml_collections.ConfigDict(model_config).copy_and_resolve_references()
  with plain.unlocked():
    plain.scan_blocks = False
    plain.remat_blocks = False
  return plain


def build_model(model_config, num_classes: int, *, half_precision: bool = False,
                bn_axis_name: str | None = None) -> models.ResNet:
  """The `ResNet` a config describes. bf16 compute keeps float32 params and BN statistics."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ConfigError(f'number of classes {num_classes!r} is not valid: it must be >= 1')
  return models.ResNet(
      num_classes=num_classes, dtype=jnp.bfloat16 if half_precision else jnp.float32,
      bn_axis_name=bn_axis_name, **architecture(model_config))


def model_name(model_config) -> str:
  """A short human name: resnet56-A, plain56, preact_resnet164-B, wrn-28-10, wide_resnet50_2."""
  cfg = default_model_config()
  cfg.update(dict(model_config))
  if cfg.family == 'wrn':
    return f'wrn-{cfg.depth}-{cfg.width}'
  prefix = 'preact_' if cfg.preact else ''
  if cfg.family == 'imagenet':
    base = f'wide_resnet{cfg.depth}_{cfg.width}' if cfg.width > 1 else f'resnet{cfg.depth}'
    return prefix + base + ('' if cfg.shortcut == 'B' else f'-{cfg.shortcut}')
  if cfg.shortcut == 'none':
    return f'{prefix}plain{cfg.depth}' + (f'x{cfg.width}' if cfg.width > 1 else '')
  return f'{prefix}resnet{cfg.depth}' + (f'x{cfg.width}' if cfg.width > 1 else '') + \
      f'-{cfg.shortcut}'
