"""One configurable residual network, in pure-functional Flax Linen.

Every architecture of the three papers is an instance of `ResNet`:

* ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition",
  arXiv:1512.03385): post-activation blocks, shortcut options A/B/C (Sec. 3.3-4.1).
* Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
  Networks", arXiv:1603.05027): BN-ReLU-conv ordering, identity skip path.
* Wide ResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146): pre-activation basic
  blocks widened by k, with dropout between the two convolutions.

Where a paper leaves a detail open (what a pre-activation feeds, where a bottleneck
strides, how layers are initialised), the network follows the authors' released code:
KaimingHe/resnet-1k-layers, facebook/fb.resnet.torch, szagoruyko/wide-residual-networks;
each choice below names its file.

Named architectures (resnet56, wrn_28_10, resnet50, ...) are data in `presets.py`,
not classes. Every block of a net is built from one `BlockConfig`. Layouts are NHWC.
Convolutions use torch-style symmetric padding, so strided layers match torchvision
exactly (XLA's 'SAME' pads asymmetrically). Convolutions, BatchNorm, max-pooling and the
barrier between blocks are `ResNet.ops` (`cpu_ops.py`): the plain operations, or forms
that compute the same results faster on XLA:CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.model import cpu_ops

SHORTCUTS = ('A', 'B', 'C', 'none')
BLOCKS = ('basic', 'bottleneck')
STEMS = ('cifar', 'imagenet')
NORMS = ('batch', 'none')
# Where a strided bottleneck downsamples. He et al.'s own code puts the stride on the first
# 1x1 (KaimingHe/resnet-1k-layers: resnet-pre-act.lua, line 43); fb.resnet.torch and
# torchvision put it on the 3x3 (facebook/fb.resnet.torch: models/preresnet.lua, line 101).
BOTTLENECK_STRIDES = ('first_1x1', '3x3')
# What the pre-activation (BN-ReLU) of a pre-activation block feeds, as in
# facebook/fb.resnet.torch: models/preresnet.lua, lines 65-71 and 91-97:
# 'branch' (its default): the residual branch only; the skip reads the raw input.
# 'shared' ('both_preact'): one BN-ReLU feeds the branch and the skip.
# 'stem' ('no_preact'): none; the input was activated by the stem's BN-ReLU(-maxpool),
#         which then serves both paths (ImageNet nets, first block of stage 1).
PREACT_INPUTS = ('branch', 'shared', 'stem')
# Which first-of-stage blocks of a pre-activation net share their pre-activation:
# 'stage_entry': all of them (fb.resnet.torch: models/preresnet.lua, layer(), lines 114-125);
# 'shape_change': those whose shape changes, i.e. whose shortcut is a projection
#   (szagoruyko/wide-residual-networks: models/wide-resnet.lua, line 51; so does
#   KaimingHe/resnet-1k-layers: resnet-pre-act.lua, line 38).
PREACT_SHARED_AT = ('stage_entry', 'shape_change')

# He et al. 2015b ("Delving Deep into Rectifiers") normal init, N(0, 2 / fan). fan_out =
# k*k*C_out as fb.resnet.torch (models/preresnet.lua, lines 197-208) and torchvision;
# fan_in = k*k*C_in as the WRN code since its commit ea02518 "fix MSRA init"
# (szagoruyko/wide-residual-networks: models/utils.lua, MSRinit).
CONV_INITS = {mode: nn.initializers.variance_scaling(2.0, mode, 'normal')
              for mode in ('fan_out', 'fan_in')}
# BN scale: 1 as fb.resnet.torch and torchvision set it; U(0, 1) is Torch's own
# nn.BatchNormalization reset, which the WRN Lua code never overrides (torch/nn:
# BatchNormalization.lua; szagoruyko/wide-residual-networks: models/utils.lua).
BN_SCALE_INITS = {'ones': nn.initializers.ones, 'uniform': nn.initializers.uniform(1.0)}
# The classifier's weight keeps Torch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
# (torch/nn: Linear.lua reset; torchvision's nn.Linear default is the same), and its bias
# is zeroed as the authors' code does (fb.resnet.torch: models/preresnet.lua, lines 221-223;
# KaimingHe/resnet-1k-layers: resnet-pre-act.lua, lines 151-153;
# szagoruyko/wide-residual-networks: models/utils.lua, FCinit). Its std is
# 1/sqrt(3 fan_in); Flax's default, lecun_normal, would be sqrt(3) = 1.7x wider.
head_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  half = kernel_size // 2
  return ((half, half), (half, half))


def Conv(features: int, kernel_size: int, strides: int = 1, *, name: str, dtype=jnp.float32,
         use_bias: bool = False, kernel_init: Callable = CONV_INITS['fan_out'],
         conv_general_dilated: Callable = lax.conv_general_dilated) -> nn.Conv:
  """Convolution with torch-style symmetric padding.

  Bias-free when BN follows (its bias takes the role); a net without normalisation
  gives every convolution a zero-initialised bias instead (`use_bias`).
  """
  return nn.Conv(features, (kernel_size, kernel_size), (strides, strides),
                 padding=_symmetric_padding(kernel_size), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init,
                 conv_general_dilated=conv_general_dilated, name=name)


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


def _choices(default, allowed):
  """A BlockConfig field whose value must be one of `allowed` (checked by presets)."""
  return dataclasses.field(default=default, metadata={'choices': tuple(allowed)})


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """How every block of a net is built: one field per block key of the model config
  (`presets.default_model_config`, where each is described), with its 'auto' resolved
  (`presets.architecture`). A new block option is a key there, a field here and its use
  in `ResidualBlock`.

  `norm`, `conv_init` and `bn_scale_init` also build the stem, the final BN and the head.
  """
  block: str = _choices('basic', BLOCKS)
  shortcut: str = _choices('A', SHORTCUTS)
  preact: bool = False
  width: int = 1  # bottleneck inner-width multiplier (torchvision's wide_resnet50_2: 2)
  bottleneck_stride: str = _choices('3x3', BOTTLENECK_STRIDES)
  post_add_activation: bool = True  # post-activation only: ReLU after the addition
  zero_init_residual: bool = False  # the branch's last layer starts at zero
  dropout_rate: float = 0.0  # Wide ResNets: dropout between the convolutions
  norm: str = _choices('batch', NORMS)
  conv_init: str = _choices('fan_out', tuple(CONV_INITS))
  bn_scale_init: str = _choices('ones', tuple(BN_SCALE_INITS))


class ResidualBlock(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1; expansion 4) residual block, as
  `config` describes it.

  `config.preact=False` is the 2015 ordering: conv-BN-ReLU-conv-BN, add, ReLU.
  `config.preact=True` is the 2016 "full pre-activation" ordering: (BN-ReLU-conv) x2, add. What
  the first BN-ReLU feeds is `preact_input` (see PREACT_INPUTS): in most blocks the branch
  only, so the skip path is a pure identity of the raw input; a projection shortcut of a
  pre-activation block is a bare 1x1 conv, without BN (fb.resnet.torch:
  models/preresnet.lua, lines 31-34).

  `norm_layer` and `conv_layer` are the net's BatchNorm and convolution; `norm_layer=None`
  (`config.norm='none'`) builds the block without normalisation: every conv then has a
  bias.

  `config.zero_init_residual` starts the block as the identity (its output is its skip) with a
  branch that still learns: it zeroes the branch's last layer, which is its last BN's
  scale where the branch ends in BN (post-activation; Goyal et al. 2017, torchvision), and
  its last convolution where it ends in a conv (pre-activation, or no BN; as timm's
  ResNetV2). Zeroing the last BN of a pre-activation branch, which sits before the last
  conv, would zero that conv's input and so its gradient: the branch would never train.
  """
  planes: int  # block output channels (basic) or bottleneck inner channels before widening
  strides: int = 1
  preact_input: str = 'branch'  # pre-activation only, see PREACT_INPUTS
  config: BlockConfig = BlockConfig()
  norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm  # None: no normalisation
  conv_layer: Callable[..., nn.Module] = Conv

  @property
  def out_channels(self) -> int:
    return self.planes * 4 if self.config.block == 'bottleneck' else self.planes

  def _branch_layers(self) -> list[tuple[int, int, int]]:
    """(features, kernel, stride) of each convolution on the residual branch."""
    if self.config.block == 'basic':
      return [(self.planes, 3, self.strides), (self.planes, 3, 1)]
    inner = self.planes * self.config.width
    on_first = self.config.bottleneck_stride == 'first_1x1'
    first_stride, mid_stride = (self.strides, 1) if on_first else (1, self.strides)
    return [(inner, 1, first_stride), (inner, 3, mid_stride), (self.out_channels, 1, 1)]

  def _needs_projection(self, in_channels: int) -> bool:
    shape_changes = self.strides != 1 or in_channels != self.out_channels
    shortcut = self.config.shortcut
    return shortcut == 'C' or (shortcut == 'B' and shape_changes)

  def _conv(self, *args, **kwargs) -> nn.Module:
    """A convolution with a bias exactly when no BN follows to provide one."""
    return self.conv_layer(*args, use_bias=self.norm_layer is None, **kwargs)

  def _skip(self, x, train: bool):
    if self.config.shortcut == 'none':
      return None
    if self._needs_projection(x.shape[-1]):
      y = self._conv(self.out_channels, 1, self.strides, name='shortcut_conv')(x)
      if self.config.preact or self.norm_layer is None:
        return y
      return self.norm_layer(name='shortcut_bn')(y, use_running_average=not train)
    return identity_shortcut_a(x, self.out_channels, self.strides)

  @nn.compact
  def __call__(self, x, train: bool):
    config = self.config
    branch = self._branch_layers()
    last = len(branch)
    ends_in_norm = self.norm_layer is not None and not config.preact

    def norm(i, y):
      if self.norm_layer is None:
        return y
      zero = config.zero_init_residual and ends_in_norm and i == last
      extra = dict(scale_init=nn.initializers.zeros) if zero else {}
      return self.norm_layer(name=f'bn{i}', **extra)(y, use_running_average=not train)

    def conv(i, y):
      features, kernel, stride = branch[i - 1]
      zero = config.zero_init_residual and not ends_in_norm and i == last
      extra = dict(kernel_init=nn.initializers.zeros) if zero else {}
      return self._conv(features, kernel, stride, name=f'conv{i}', **extra)(y)

    def dropout(y):  # sits right before the branch's last convolution (WRN, Sec. 2)
      rate = config.dropout_rate
      return nn.Dropout(rate, deterministic=not train)(y) if rate else y

    if config.preact:
      if self.preact_input == 'stem':
        y = skip_input = x
      else:
        y = nn.relu(norm(1, x))
        skip_input = y if self.preact_input == 'shared' else x
      skip = self._skip(skip_input, train)
      y = conv(1, y)
      for i in range(2, last + 1):
        y = nn.relu(norm(i, y))
        y = conv(i, dropout(y) if i == last else y)
      return y if skip is None else y + skip

    skip = self._skip(x, train)
    y = x
    for i in range(1, last + 1):
      y = norm(i, conv(i, y))
      if i < last:
        y = nn.relu(y)
        y = dropout(y) if i == last - 1 else y
    if skip is not None:
      y = y + skip
    return nn.relu(y) if config.post_add_activation else y


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

  Pre-activation nets are built as the authors' code builds them: the CIFAR stem is a
  bare conv; the first block of a stage shares its BN-ReLU with its shortcut where
  `preact_shared_at` says (PREACT_SHARED_AT); the ImageNet stem's BN-ReLU-maxpool is the
  pre-activation of stage 1's first block, which adds none of its own ('no_preact' in
  facebook/fb.resnet.torch: models/preresnet.lua, lines 146-158).

  `block_config.norm='none'` removes every BatchNorm (stem, blocks, shortcuts, final): a
  net for studying gradient flow without normalisation; each conv then has a
  zero-initialised bias, since no BN bias takes that role.

  `ops` are the convolution, BatchNorm, max-pool and fusion barrier it is built from
  (`cpu_ops.Ops`); `presets.build_model` picks them for the backend.
  """
  stage_sizes: Sequence[int]
  stage_planes: Sequence[int]
  num_classes: int
  block_config: BlockConfig = BlockConfig()
  stem: str = 'cifar'  # 'cifar': one 3x3 conv; 'imagenet': 7x7/2 conv + 3x3/2 max-pool
  stem_width: int = 16
  preact_shared_at: str = 'stage_entry'  # see PREACT_SHARED_AT
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
  ops: cpu_ops.Ops = cpu_ops.XLA

  def _norm(self, train: bool) -> Callable[..., nn.Module] | None:
    if self.block_config.norm == 'none':
      return None
    return functools.partial(
        self.ops.batch_norm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        dtype=self.dtype, param_dtype=jnp.float32,
        axis_name=self.bn_axis_name if train else None,
        scale_init=BN_SCALE_INITS[self.block_config.bn_scale_init])

  def _conv(self) -> Callable[..., nn.Module]:
    return functools.partial(Conv, dtype=self.dtype, use_bias=self.block_config.norm == 'none',
                             kernel_init=CONV_INITS[self.block_config.conv_init],
                             conv_general_dilated=self.ops.conv_general_dilated)

  def _preact_input(self, stage: int, in_channels: int, out_channels: int) -> str:
    """What the pre-activation of stage `stage`'s first block feeds (PREACT_INPUTS)."""
    if stage == 1 and self.stem == 'imagenet':
      return 'stem'
    shape_changes = stage > 1 or in_channels != out_channels
    if self.preact_shared_at == 'stage_entry' or shape_changes:
      return 'shared'
    return 'branch'

  @nn.compact
  def __call__(self, x, train: bool):
    norm, conv = self._norm(train), self._conv()
    preact = self.block_config.preact

    def bn_relu(name, y):
      return nn.relu(y if norm is None else norm(name=name)(y, use_running_average=not train))

    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = bn_relu('stem_bn', conv(self.stem_width, 7, 2, name='stem_conv')(x))
      x = self.ops.max_pool(x, 3, 2, 1)
    else:
      x = conv(self.stem_width, 3, 1, name='stem_conv')(x)
      if not preact:  # pre-activation blocks start with their own BN-ReLU
        x = bn_relu('stem_bn', x)
    self.sow('intermediates', 'stem', x)

    # Training: each block's input is read from memory, not recomputed (cpu_ops.py).
    materialized = self.ops.fusion_barrier if train else (lambda x: x)
    for stage, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_planes), 1):
      block = functools.partial(
          nn.remat(ResidualBlock, static_argnums=(2,)) if self.remat_blocks else ResidualBlock,
          planes=planes, config=self.block_config, norm_layer=norm, conv_layer=conv)
      out_channels = planes * 4 if self.block_config.block == 'bottleneck' else planes
      preact_input = self._preact_input(stage, x.shape[-1], out_channels)
      x = block(strides=2 if stage > 1 else 1, preact_input=preact_input,
                name=f'stage{stage}_block0')(materialized(x), train)
      if self.scan_blocks and num_blocks > 1:
        x, _ = nn.scan(_RepeatedBlock, variable_axes={'params': 0, 'batch_stats': 0},
                       split_rngs={'params': True, 'dropout': True}, length=num_blocks - 1)(
                           block=block, train=train, name=f'stage{stage}_blocks')(x, None)
      else:
        for index in range(1, num_blocks):
          x = block(strides=1, name=f'stage{stage}_block{index}')(materialized(x), train)
      self.sow('intermediates', f'stage{stage}', x)

    if preact:
      x = bn_relu('final_bn', x)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=head_kernel_init, bias_init=nn.initializers.zeros,
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
