"""The residual networks: one configurable `ResNet` and the named architectures.

  resnet.py   blocks, shortcuts and `ResNet`; every block is built from one `BlockConfig`
  presets.py  named architectures as data, the depth rules, and config -> `ResNet`
  cpu_ops.py  conv, BatchNorm, max-pool and fusion barrier: the plain operations, or forms
              that XLA:CPU runs fast; `build_model` picks them for the backend

The names below are the subsystem's interface; code outside it uses them.
"""

from resnet_jax.model.cpu_ops import plain_xla
from resnet_jax.model.presets import (PRESETS, architecture, build_model, default_model_config,
                                      model_name, preset, unrolled)
from resnet_jax.model.resnet import BlockConfig, ResidualBlock, ResNet, stack_repeated_blocks
