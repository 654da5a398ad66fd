"""Named architectures as data, and the one place a model config becomes a `ResNet`.

A model config (`config.model`) holds a handful of keys; `architecture()` checks them
and turns them into `ResNet` arguments: the net's layout from `NET_KEYS`, and one
`resnet.BlockConfig` from all the others, the block keys. Adding a named variant is one
line in `PRESETS`; adding a block option is a key in `default_model_config()`, a field of
`BlockConfig` and its use in `resnet.ResidualBlock`.

Depth conventions, as each paper counts layers:
* 'cifar'    (He et al. 2015, Sec. 4.2): depth = 6n+2 (basic) or 9n+2 (bottleneck),
             n blocks per stage, widths 16k/32k/64k after a 16-channel 3x3 stem.
* 'wrn'      (Zagoruyko & Komodakis 2016, Table 1): WRN-d-k, depth = 6n+4, widths
             16, 16k, 32k, 64k, pre-activation basic blocks.
* 'imagenet' (He et al. 2015, Table 1): ResNet-18/34/50/101/152(/200), 7x7 stem and
             max-pool, widths 64/128/256/512; width k widens the bottleneck's inner
             convolutions (torchvision's wide_resnet50_2 is k=2); the depth fixes the block.

`block`, `shortcut` and `bottleneck_stride` default to 'auto': the choice of each family's
paper and code, resolved in `architecture()`; an explicit value wins.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

from resnet_jax.errors import ConfigError
from resnet_jax.model import cpu_ops, resnet
from resnet_jax.model.resnet import BlockConfig

FAMILIES = ('cifar', 'wrn', 'imagenet')
IMAGENET_STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}


# The keys that shape the net as a whole; every other key is a field of resnet.BlockConfig.
NET_KEYS = ('family', 'depth', 'scan_blocks', 'remat_blocks')


def default_model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      family='cifar',  # 'cifar' | 'wrn' | 'imagenet': sets the depth rule, stem and widths
      depth=20,
      width=1,  # width factor k
      block='auto',  # 'auto' | 'basic' | 'bottleneck'; auto: ImageNet by depth, else basic
      shortcut='auto',  # 'auto' | 'A' | 'B' | 'C' | 'none' (the plain twin); auto: the paper's
      preact=False,  # full pre-activation (He et al. 2016)
      dropout_rate=0.0,  # between the convolutions (WRN)
      zero_init_residual=False,  # each block starts as the identity: zero the branch's last layer
      post_add_activation=True,  # post-activation blocks: ReLU after the addition
      bottleneck_stride='auto',  # 'auto' | 'first_1x1' | '3x3'; auto: CIFAR 1x1, ImageNet 3x3
      norm='batch',  # 'batch' | 'none' (no normalisation at all; convs get a zero-init bias)
      conv_init='fan_out',  # 'fan_out' | 'fan_in': He normal N(0, 2/fan) (WRN code: fan_in)
      bn_scale_init='ones',  # 'ones' | 'uniform': U(0, 1), Torch's default (WRN code)
      scan_blocks=False,  # scan each stage's repeated blocks: fast compiles of very deep nets
      remat_blocks=False,  # recompute block activations in the backward pass: less memory
  ))


# WRN initialised as the torchnet Lua code released with the paper's v2 (commit 5e7ed6c,
# Nov 2016), which produced its mean/std numbers (Tables 5-6) that this repo's per-channel
# normalisation compares with: conv He normal with fan_in (models/utils.lua MSRinit, since
# commit ea02518 "fix MSRA init", 8 Sep 2016) and BN scale U(0, 1), Torch's default, which
# the WRN Lua code never overrides (szagoruyko/wide-residual-networks). The v1 (May 2016,
# ZCA, Table 4) runs predate that fix and used fan_out (--config.model.conv_init=fan_out);
# the dates of the v2 runs themselves are not documented.
WRN_INIT = dict(conv_init='fan_in', bn_scale_init='uniform')

PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2015, CIFAR-10 (Table 6): option A shortcuts; the plain twins drop them.
    **{f'resnet{d}': dict(depth=d) for d in (20, 32, 44, 56, 110, 1202)},
    **{f'plain{d}': dict(depth=d, shortcut='none') for d in (20, 32, 44, 56, 110)},
    # He et al. 2016, CIFAR (Tables 2-4): option A for the basic ResNet-110, projections
    # where the shape changes and the stride on the first 1x1 for the bottleneck nets.
    'preact_resnet110': dict(depth=110, preact=True),
    'preact_resnet164': dict(depth=164, block='bottleneck', preact=True),
    'preact_resnet1001': dict(depth=1001, block='bottleneck', preact=True),
    # Zagoruyko & Komodakis 2016 (Tables 4-5).
    **{f'wrn_{d}_{k}': dict(family='wrn', depth=d, width=k, preact=True, **WRN_INIT)
       for d, k in ((16, 4), (16, 8), (16, 10), (22, 8), (28, 10), (40, 4), (40, 10))},
    # He et al. 2015, ImageNet (Table 1), torchvision layout (stride on the 3x3), option B.
    **{f'resnet{d}': dict(family='imagenet', depth=d) for d in (18, 34, 50, 101, 152)},
    'wide_resnet50_2': dict(family='imagenet', depth=50, width=2),
    'wide_resnet101_2': dict(family='imagenet', depth=101, width=2),
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


def _block(family: str, depth: int, block: str) -> str:
  """The block kind: ImageNet depths fix it (He et al. 2015, Table 1; torchvision); the
  CIFAR and WRN families default to basic blocks (6n+2, 6n+4)."""
  if family == 'imagenet':
    if depth not in IMAGENET_STAGES:
      raise ConfigError(f'model.depth={depth} is not an ImageNet ResNet depth; allowed: '
                        f'{", ".join(map(str, IMAGENET_STAGES))}')
    expected_block = IMAGENET_STAGES[depth][0]
    if block not in ('auto', expected_block):
      raise ConfigError(f'ResNet-{depth} uses model.block={expected_block!r}, not {block!r}; '
                        f'set model.block={expected_block} (or auto)')
    return expected_block
  if family == 'wrn' and block == 'bottleneck':
    raise ConfigError("Wide ResNets use model.block='basic'; set model.block=basic")
  return 'basic' if block == 'auto' else block


def _blocks_per_stage(family: str, depth: int, block: str) -> tuple[int, ...]:
  if family == 'imagenet':
    return IMAGENET_STAGES[depth][1]
  if family == 'wrn':
    offset, per_block, rule = 4, 6, 'WRN depth must be 6n+4 (16, 22, 28, 40, ...)'
  elif block == 'basic':
    offset, per_block, rule = 2, 6, ('CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, '
                                     '...), or 9n+2 with model.block=bottleneck')
  else:
    offset, per_block, rule = 2, 9, 'CIFAR bottleneck depth must be 9n+2 (164, 1001, ...)'
  n, remainder = divmod(depth - offset, per_block)
  if remainder or n < 1:
    raise ConfigError(f'model.depth={depth} is not valid: {rule}')
  return (n, n, n)


def _shortcut(family: str, block: str, shortcut: str) -> str:
  """'auto': the shortcut each paper used; an explicit choice wins.

  * CIFAR basic nets (ResNet-20..1202, pre-act ResNet-110): option A. He et al. 2015,
    Sec. 4.2: "we use identity shortcuts in all cases (i.e., option A)". For pre-act
    ResNet-110 it is inferred: He et al. 2016 keep [1]'s details and do not name it;
    fb.resnet.torch resolves shortcutType to 'A' for CIFAR (opts.lua, lines 75-85).
  * CIFAR bottleneck nets (pre-act ResNet-164/1001): projections where the shape changes
    (B): He et al. 2016, appendix; KaimingHe/resnet-1k-layers: resnet-pre-act.lua, 62-90.
  * WRN: a 1x1 projection where the shape changes (B): models/wide-resnet.lua, line 67.
  * ImageNet: option B (He et al. 2015, Table 3 caption; fb.resnet.torch opts.lua;
    torchvision).
  """
  if shortcut != 'auto':
    return shortcut
  return 'A' if family == 'cifar' and block == 'basic' else 'B'


# The block keys whose 'auto' architecture() resolves from the family and depth.
_RESOLVED = ('block', 'shortcut', 'bottleneck_stride')


def architecture(model_config) -> dict[str, Any]:
  """Checks a model config and returns the matching `ResNet` keyword arguments, with every
  'auto' resolved (block, shortcut, bottleneck_stride) in their `block_config`."""
  cfg = default_model_config()
  unknown = set(model_config.keys()) - set(cfg.keys())
  if unknown:
    raise ConfigError(f'unknown model key(s) {sorted(unknown)}; allowed: {sorted(cfg.keys())}')
  cfg.update(dict(model_config))
  _choice('family', cfg.family, FAMILIES)
  for field in dataclasses.fields(BlockConfig):
    if 'choices' in field.metadata:
      auto = ('auto',) if field.name in _RESOLVED else ()
      _choice(field.name, cfg[field.name], auto + field.metadata['choices'])
  if not isinstance(cfg.width, int) or cfg.width < 1:
    raise ConfigError(f'model.width={cfg.width!r} is not valid: the width factor k must be an '
                      'integer >= 1')
  if not 0.0 <= cfg.dropout_rate < 1.0:
    raise ConfigError(f'model.dropout_rate={cfg.dropout_rate} is not valid: use 0 <= rate < 1')
  block = _block(cfg.family, cfg.depth, cfg.block)
  stage_sizes = _blocks_per_stage(cfg.family, cfg.depth, block)
  # Basic blocks widen as a whole (WRN); bottlenecks widen only their inner convolutions
  # (WRN Sec. 2, torchvision's wide_resnet50_2).
  widen = 1 if block == 'bottleneck' else cfg.width
  if cfg.family == 'imagenet':
    stem, stem_width, base_planes = 'imagenet', 64, (64, 128, 256, 512)
  else:
    stem, stem_width, base_planes = 'cifar', 16, (16, 32, 64)
  stage_planes = tuple(p * widen for p in base_planes)
  # 'auto': He et al.'s own CIFAR code strides the first 1x1 (KaimingHe/resnet-1k-layers:
  # resnet-pre-act.lua, line 43), for both orderings, so that He et al. 2016's Table 2
  # compares units that differ only in their ordering; ImageNet nets stride the 3x3 as
  # fb.resnet.torch and torchvision (and their pretrained weights) do.
  bottleneck_stride = cfg.bottleneck_stride
  if bottleneck_stride == 'auto':
    bottleneck_stride = '3x3' if cfg.family == 'imagenet' else 'first_1x1'
  block_options = {field.name: cfg[field.name] for field in dataclasses.fields(BlockConfig)}
  block_config = BlockConfig(**{
      **block_options, 'block': block, 'shortcut': _shortcut(cfg.family, block, cfg.shortcut),
      'width': cfg.width if block == 'bottleneck' else 1,
      'bottleneck_stride': bottleneck_stride, 'dropout_rate': float(cfg.dropout_rate)})
  return dict(
      stage_sizes=stage_sizes, stage_planes=stage_planes, block_config=block_config,
      stem=stem, stem_width=stem_width,
      # CIFAR: fb.resnet.torch's preresnet.lua; WRN: its own code (resnet.PREACT_SHARED_AT).
      preact_shared_at='shape_change' if cfg.family == 'wrn' else 'stage_entry',
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
                bn_axis_name: str | None = None) -> resnet.ResNet:
  """The `ResNet` a config describes. bf16 compute keeps float32 params and BN statistics.

  Its operations are chosen here, once, for the backend (`cpu_ops.for_backend`).
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ConfigError(f'number of classes {num_classes!r} is not valid: it must be >= 1')
  return resnet.ResNet(
      num_classes=num_classes, dtype=jnp.bfloat16 if half_precision else jnp.float32,
      bn_axis_name=bn_axis_name, ops=cpu_ops.for_backend(), **architecture(model_config))


def model_name(model_config) -> str:
  """A short human name: resnet56-A, plain56, preact_resnet164-B, wrn-28-10, wide_resnet50_2;
  the shortcut as resolved, '-nonorm' for a net without normalisation."""
  cfg = default_model_config()
  cfg.update(dict(model_config))
  try:
    shortcut = architecture(cfg)['block_config'].shortcut
  except ConfigError:  # an impossible config is still named, by its raw values
    shortcut = cfg.shortcut
  suffix = '-nonorm' if cfg.norm == 'none' else ''
  if cfg.family == 'wrn':
    return f'wrn-{cfg.depth}-{cfg.width}' + suffix
  prefix = 'preact_' if cfg.preact else ''
  if cfg.family == 'imagenet':
    base = f'wide_resnet{cfg.depth}_{cfg.width}' if cfg.width > 1 else f'resnet{cfg.depth}'
    return prefix + base + ('' if shortcut == 'B' else f'-{shortcut}') + suffix
  widened = f'x{cfg.width}' if cfg.width > 1 else ''
  if shortcut == 'none':
    return f'{prefix}plain{cfg.depth}{widened}' + suffix
  return f'{prefix}resnet{cfg.depth}{widened}-{shortcut}' + suffix
