"""One configurable residual network, in pure-functional Flax Linen.

Every architecture of the three papers is an instance of `ResNet`:

* ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition",
  arXiv:1512.03385): post-activation blocks, shortcut options A/B/C (Sec. 3.3-4.1).
* Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
  Networks", arXiv:1603.05027): BN-ReLU-conv ordering, pure-identity skip path.
* Wide ResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146): pre-activation basic
  blocks widened by k, with dropout between the two convolutions.

Named architectures (resnet56, wrn_28_10, resnet50, ...) are data in `presets.py`,
not classes. Layouts are NHWC. Convolutions use torch-style symmetric padding, so
strided layers match torchvision exactly (XLA's 'SAME' pads asymmetrically).
Convolutions, BatchNorm and max-pooling come from `layers.py`: the same results, with
faster forms on XLA:CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import layers

SHORTCUTS = ('A', 'B', 'C', 'none')
BLOCKS = ('basic', 'bottleneck')
STEMS = ('cifar', 'imagenet')

# He et al. 2015b ("Delving Deep into Rectifiers") normal init, fan-out mode as torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  half = kernel_size // 2
  return ((half, half), (half, half))


def Conv(features: int, kernel_size: int, strides: int = 1, *, dtype, name: str) -> nn.Conv:
  """Bias-free convolution with torch-style symmetric padding (every conv is followed by BN)."""
  return nn.Conv(features, (kernel_size, kernel_size), (strides, strides),
                 padding=_symmetric_padding(kernel_size), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                 conv_general_dilated=layers.conv_general_dilated, name=name)


def identity_shortcut_a(x, out_channels: int, strides: int):
  """Option A (He et al. 2015, Sec. 4.2): strided subsampling, zero-padded extra channels.

  Parameter-free, so a residual net and its plain twin have identical parameter counts.
  """
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise ValueError(f'option A cannot shrink channels ({x.shape[-1]} -> {out_channels})')
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class ResidualBlock(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1; expansion 4) residual block.

  `preact=False` is the 2015 ordering: conv-BN-ReLU-conv-BN, add, ReLU.
  `preact=True` is the 2016 "full pre-activation" ordering: (BN-ReLU-conv) x2, add; the
  skip path stays a pure identity (a projection, where used, reads the pre-activated input,
  as in the authors' code and in Wide ResNets).
  """
  planes: int  # block output channels (basic) or bottleneck inner channels before widening
  block: str = 'basic'
  strides: int = 1
  shortcut: str = 'A'
  preact: bool = False
  width: int = 1  # bottleneck inner-width multiplier (torchvision wide_resnet50_2 uses 2)
  stride_on_first_1x1: bool = False  # bottleneck: 2015 paper puts the stride on the first 1x1
  post_add_activation: bool = True  # post-activation only: ReLU after the addition
  zero_init_residual: bool = False  # last BN scale of the branch starts at zero (Goyal et al. 2017)
  dropout_rate: float = 0.0  # Wide ResNets: dropout between the convolutions
  norm: Callable[..., nn.Module] = nn.BatchNorm
  dtype: Any = jnp.float32

  @property
  def out_channels(self) -> int:
    return self.planes * 4 if self.block == 'bottleneck' else self.planes

  def _branch_layers(self) -> list[tuple[int, int, int]]:
    """(features, kernel, stride) of each convolution on the residual branch."""
    if self.block == 'basic':
      return [(self.planes, 3, self.strides), (self.planes, 3, 1)]
    inner = self.planes * self.width
    first_stride, mid_stride = (self.strides, 1) if self.stride_on_first_1x1 else (1, self.strides)
    return [(inner, 1, first_stride), (inner, 3, mid_stride), (self.out_channels, 1, 1)]

  def _needs_projection(self, in_channels: int) -> bool:
    shape_changes = self.strides != 1 or in_channels != self.out_channels
    return self.shortcut == 'C' or (self.shortcut == 'B' and shape_changes)

  def _skip(self, x, preactivated, train: bool):
    if self.shortcut == 'none':
      return None
    if self._needs_projection(x.shape[-1]):
      conv = Conv(self.out_channels, 1, self.strides, dtype=self.dtype, name='shortcut_conv')
      if self.preact:
        return conv(preactivated)
      return self.norm(name='shortcut_bn')(conv(x), use_running_average=not train)
    return identity_shortcut_a(x, self.out_channels, self.strides)

  @nn.compact
  def __call__(self, x, train: bool):
    layers = self._branch_layers()
    last = len(layers)

    def norm(i):
      # Zero-init of the branch's last BN makes the whole block start as the identity.
      zero = self.zero_init_residual and i == last
      bn = self.norm(name=f'bn{i}', scale_init=nn.initializers.zeros if zero else nn.initializers.ones)
      return lambda y: bn(y, use_running_average=not train)

    def conv(i, y):
      features, kernel, stride = layers[i - 1]
      return Conv(features, kernel, stride, dtype=self.dtype, name=f'conv{i}')(y)

    def dropout(y):  # sits right before the branch's last convolution (WRN, Sec. 2)
      return nn.Dropout(self.dropout_rate, deterministic=not train)(y) if self.dropout_rate else y

    if self.preact:
      preactivated = nn.relu(norm(1)(x))
      skip = self._skip(x, preactivated, train)
      y = conv(1, preactivated)
      for i in range(2, last + 1):
        y = nn.relu(norm(i)(y))
        y = conv(i, dropout(y) if i == last else y)
      return y if skip is None else y + skip

    skip = self._skip(x, None, train)
    y = x
    for i in range(1, last + 1):
      y = norm(i)(conv(i, y))
      if i < last:
        y = nn.relu(y)
        y = dropout(y) if i == last - 1 else y
    if skip is not None:
      y = y + skip
    return nn.relu(y) if self.post_add_activation else y


class _RepeatedBlock(nn.Module):
  """One step of a scan over a stage's identical blocks: (x, None) -> (block(x), None)."""
  block: Callable[..., ResidualBlock]
  train: bool

  @nn.compact
  def __call__(self, x, _):
    return self.block(strides=1, name='block')(x, self.train), None


class ResNet(nn.Module):
  """Stem, residual stages, (final BN-ReLU for pre-activation), global pool, linear head.

  Stage `s` has `stage_sizes[s]` blocks of `stage_planes[s]` planes; the first block of
  every stage after the first downsamples by 2. Outputs are float32 logits.
  """
  stage_sizes: Sequence[int]
  stage_planes: Sequence[int]
  num_classes: int
  block: str = 'basic'
  stem: str = 'cifar'  # 'cifar': one 3x3 conv; 'imagenet': 7x7/2 conv + 3x3/2 max-pool
  stem_width: int = 16
  shortcut: str = 'A'
  preact: bool = False
  width: int = 1
  stride_on_first_1x1: bool = False
  post_add_activation: bool = True
  zero_init_residual: bool = False
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9  # torch's 0.1, in Flax's convention
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None  # set to the data axis to sync BN statistics across devices
  dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32
  # Run each stage's blocks after the first (all alike) as one scan: compile time no longer
  # grows with depth. Their parameters are then stacked under stage<s>_blocks/block.
  scan_blocks: bool = False
  # Recompute each block's activations in the backward pass instead of keeping them
  # (jax.checkpoint): activation memory of one block per stage, ~1.3x the step's FLOPs.
  remat_blocks: bool = False

  def _norm(self, train: bool):
    batch_norm = layers.BatchNorm if layers.on_cpu() else nn.BatchNorm  # same variables
    return functools.partial(
        batch_norm, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=jnp.float32, axis_name=self.bn_axis_name if train else None)

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self._norm(train)
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = Conv(self.stem_width, 7, 2, dtype=self.dtype, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x, use_running_average=not train))
      x = layers.max_pool(x, 3, 2, 1)
    else:
      x = Conv(self.stem_width, 3, 1, dtype=self.dtype, name='stem_conv')(x)
      if not self.preact:  # pre-activation blocks start with their own BN-ReLU
        x = nn.relu(norm(name='stem_bn')(x, use_running_average=not train))
    self.sow('intermediates', 'stem', x)

    # Training on CPU: each block's input is read from memory, not recomputed (layers.py).
    materialized = layers.fusion_barrier if train else (lambda x: x)
    for stage, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_planes), 1):
      block = functools.partial(
          nn.remat(ResidualBlock, static_argnums=(2,)) if self.remat_blocks else ResidualBlock,
          planes=planes, block=self.block, shortcut=self.shortcut,
          preact=self.preact, width=self.width, stride_on_first_1x1=self.stride_on_first_1x1,
          post_add_activation=self.post_add_activation,
          zero_init_residual=self.zero_init_residual, dropout_rate=self.dropout_rate,
          norm=norm, dtype=self.dtype)
      x = block(strides=2 if stage > 1 else 1, name=f'stage{stage}_block0')(materialized(x), train)
      if self.scan_blocks and num_blocks > 1:
        x, _ = nn.scan(_RepeatedBlock, variable_axes={'params': 0, 'batch_stats': 0},
                       split_rngs={'params': True, 'dropout': True}, length=num_blocks - 1)(
                           block=block, train=train, name=f'stage{stage}_blocks')(x, None)
      else:
        for index in range(1, num_blocks):
          x = block(strides=1, name=f'stage{stage}_block{index}')(materialized(x), train)
      self.sow('intermediates', f'stage{stage}', x)

    if self.preact:
      x = nn.relu(norm(name='final_bn')(x, use_running_average=not train))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name='head')(x)
    self.sow('intermediates', 'logits', logits)
    return logits.astype(jnp.float32)


def stack_repeated_blocks(collection: dict) -> dict:
  """One variable collection of an unrolled ResNet in the layout of `scan_blocks=True`.

  Blocks 1.. of each stage (`stage<s>_block<i>`) are stacked along a new leading axis under
  `stage<s>_blocks/block`; block 0 and everything else are kept. Used to start a scanned
  model from converted or unrolled weights.
  """
  stacked = {name: value for name, value in collection.items() if not name.startswith('stage')}
  stages = sorted({name.split('_')[0] for name in collection if name.startswith('stage')})
  for stage in stages:
    blocks = sorted((name for name in collection if name.startswith(f'{stage}_block')),
                    key=lambda name: int(name.rsplit('block', 1)[1]))
    stacked[blocks[0]] = collection[blocks[0]]
    if len(blocks) > 1:
      stacked[f'{stage}_blocks'] = {'block': jax.tree.map(
          lambda *leaves: jnp.stack(leaves), *(collection[name] for name in blocks[1:]))}
  return stacked
