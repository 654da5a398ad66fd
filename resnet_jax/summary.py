"""`--mode=summary`: per-stage shapes and parameters, total parameters and forward FLOPs.

Nothing is compiled or allocated: shapes come from `jax.eval_shape`, and FLOPs from XLA's
cost analysis of the lowered (uncompiled) forward pass, so even ResNet-1202 takes seconds.
XLA counts a multiply-add as 2 FLOPs, and skips the multiply-adds that fall on zero
padding. The papers count multiply-adds *with* the padding ("FLOPs" in He et al. 2015,
Table 1), so the summary also reports that count, `macs_per_example`, from each
convolution's and the head's output shape: ResNet-50 is 4.09 G there (the papers' 3.8 G
predates torchvision's stride-on-3x3 layout) and 4.0 G multiply-adds by XLA's count; on
CIFAR's 8x8 maps padding is a larger share, so WRN-28-10 is 5.25 G against XLA's 4.8 G.
"""

from __future__ import annotations

import functools
import json
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import data
from resnet_jax.model import build_model, model_name, unrolled


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _stage_of(param_name: str) -> str:
  """'stage2_block0' -> 'stage2'; the stem keeps its row; the head and final BN are 'logits'."""
  if param_name.startswith('stage'):
    return param_name.split('_')[0]
  return 'stem' if param_name.startswith('stem') else 'logits'


def summarize(config) -> dict:
  """Returns {'model', 'params', 'flops_per_example', 'stages': [(name, shape, params)]}."""
  num_classes = data.num_classes(config.dataset)
  model = build_model(unrolled(config.model), num_classes,
                      half_precision=config.half_precision)
  size = config.dataset.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), image)

  def forward(variables, image):
    is_linear = lambda module, method: isinstance(module, (nn.Conv, nn.Dense))
    return model.apply(variables, image, train=False, mutable=['intermediates'],
                       capture_intermediates=is_linear)

  lowered = jax.jit(forward).lower(variables, image)
  _, state = lowered.out_info
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  params_per_stage: dict[str, int] = {}
  for name, subtree in variables['params'].items():
    stage = _stage_of(name)
    params_per_stage[stage] = params_per_stage.get(stage, 0) + _count(subtree)
  order = lambda name: (name != 'stem', name == 'logits', name)  # stem, stage1.., logits
  sown = {name: value[0] for name, value in state['intermediates'].items()
          if isinstance(value, tuple)}  # the stage outputs the model sows (not captured layers)
  stages = [(name, tuple(sown[name].shape[1:]), params_per_stage.get(name, 0))
            for name in sorted(sown, key=order)]
  return dict(model=model_name(config.model), params=_count(variables['params']),
              flops_per_example=int(cost['flops']),
              macs_per_example=_multiply_adds(variables['params'], state['intermediates']),
              stages=stages)


def _multiply_adds(params, intermediates) -> int:
  """Conventional multiply-adds of every conv and dense layer: output positions x kernel."""
  flat_params = flax.traverse_util.flatten_dict(params)
  total = 0
  for path, outputs in flax.traverse_util.flatten_dict(intermediates).items():
    if path[-1] != '__call__' or (*path[:-1], 'kernel') not in flat_params:
      continue
    kernel = flat_params[(*path[:-1], 'kernel')]
    positions = math.prod(outputs[0].shape[1:-1])  # H x W for a conv, 1 for the head
    total += positions * math.prod(kernel.shape)
  return total


def format_summary(summary: dict) -> str:
  rows = [f'{"stage":<8} {"output (H, W, C)":<20} {"params":>14}']
  rows += [f'{name:<8} {str(shape):<20} {params:>14,}' for name, shape, params in summary['stages']]
  rows.append(f'{"total":<8} {"":<20} {summary["params"]:>14,}')
  rows.append(f'model {summary["model"]}: {summary["params"]:,} parameters; forward pass per '
              f'example: {summary["flops_per_example"] / 1e9:.3f} GFLOPs (XLA cost analysis), '
              f'{summary["macs_per_example"] / 1e9:.3f} G multiply-adds (as the papers count)')
  rows.append(json.dumps({key: summary[key] for key in
                          ('model', 'params', 'flops_per_example', 'macs_per_example')}))
  return '\n'.join(rows)
