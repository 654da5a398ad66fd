"""Residual blocks learn small corrections: ||F(x)|| / ||x|| per block of trained nets
(He et al. 2015, Sec. 4.2, Fig. 7).

He et al. argue that if identity mappings are near-optimal, the solver drives the residual
functions F toward zero, and Fig. 7 confirms it: the responses of the residual branches
(each 3x3 layer's output after BN, before the addition and ReLU) are small, and smaller
in deeper ResNets; the plain twins' responses are larger.

For every block of every trained net this measures, over 256 test images (eval mode),
the mean of ||F(x)|| / ||x|| (x the block input, F(x) the branch output: the last BN of
an original block, the last convolution of a pre-activation one) and the std of F(x),
the quantity of Fig. 7. Block inputs and branch outputs are read with Flax's
`capture_intermediates`; nothing in the model changes.

Command:   python launch.py --config=experiments/identity.py --sweep \
               --workdir=runs/identity --config.dataset.path=<CIFAR-10>
           quick: :quick ; seeds: :seeds=3
Sweep:     depth 20/56/110 x shortcut none/A with the He et al. 2015 recipe (64k
           iterations). :quick is depth 8/20/32 on 4,096 training images for 2 epochs at
           batch 32 (256 steps).
Expected:  Fig. 7: ResNet response std below the plain nets' at every depth, decreasing as
           the ResNet gets deeper (ResNet-110 smallest); ||F(x)||/||x|| well below 1 in the
           residual nets. :quick (256 steps) measured mean ||F(x)||/||x|| of 1.04, 0.73, 0.62
           for ResNet-8/20/32 against 1.28-1.37 for the plain twins; the std ordering of
           Fig. 7 only appears with full training.
Time:      :quick 3 min on an idle 2-core CPU (training; the analysis takes seconds).
Output:    W/<point>/identity.json, W/identity_ratio.png (||F(x)||/||x|| per block),
           W/identity_std.png (Fig. 7: std of F per block, and sorted by magnitude).
"""

from __future__ import annotations

import json

import numpy as np

from experiments import common
from resnet_jax import report

FULL_DEPTHS = (20, 56, 110)
QUICK_DEPTHS = (8, 20, 32)
SHORTCUTS = ('none', 'A')
TITLES = {'none': 'plain nets', 'A': 'residual nets'}
PROBE_IMAGES = 256
IDENTITY_FILE = 'identity.json'


def get_config(arg=None):
  options = common.parse_arg(arg)
  config = common.he2015_cifar()
  if options['quick']:
    common.make_quick(config)
  return config


def get_sweep(arg=None):
  return common.shortcut_depth_sweep(common.parse_arg(arg), SHORTCUTS, QUICK_DEPTHS,
                                     FULL_DEPTHS)


def branch_responses(config, variables, images, num_classes: int) -> list[dict[str, float]]:
  """Per block, from input to output: mean ||F(x)||/||x|| and the std of F(x)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resnet_jax import models, presets  # pylint: disable=g-import-not-at-top
  blocks = common.block_names(config.model, 'identity')
  arch = presets.architecture(config.model)
  model = presets.build_model(config.model, num_classes)
  branch_layers = 2 if arch['block'] == 'basic' else 3
  branch = f'{"conv" if arch["preact"] else "bn"}{branch_layers}'  # F(x), before the addition

  def wanted(module, method_name):
    return method_name == '__call__' and (
        isinstance(module, models.ResidualBlock) or
        (module.name == branch and isinstance(module.parent, models.ResidualBlock)))

  @jax.jit
  def capture(variables, images):
    _, state = model.apply(variables, images, train=False, capture_intermediates=wanted,
                           mutable=['intermediates'])
    return state['intermediates']

  captured = capture(variables, images)
  per_example_norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=(1, 2, 3)))
  inputs = [captured['stem'][0]] + [captured[name]['__call__'][0] for name in blocks[:-1]]
  rows = []
  for name, x in zip(blocks, inputs):
    f = captured[name][branch]['__call__'][0]
    rows.append({'block': name,
                 'ratio': float(jnp.mean(per_example_norm(f) / per_example_norm(x))),
                 'std': float(jnp.std(f))})
  return rows


def measure(run) -> dict:
  """identity.json of a finished run (computed once, from its final checkpoint)."""
  path = run.workdir / IDENTITY_FILE
  if path.exists():
    return json.loads(path.read_text())
  images, _, num_classes = common.test_images(run.config, PROBE_IMAGES)
  rows = branch_responses(run.config, common.restore_variables(run), images, num_classes)
  common.write_json(path, {'blocks': rows})
  return {'blocks': rows}


def _figures(workdir, measured) -> None:
  plt = common.pyplot()
  colors = common.depth_colors([depth for _, depth, _ in measured])
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, shortcut in zip(axes, SHORTCUTS):
    for kind, depth, rows in measured:
      if kind == shortcut:
        ax.plot(range(1, len(rows) + 1), [r['ratio'] for r in rows], marker='.', ms=4,
                color=colors[depth], label=f'depth {depth}')
    ax.axhline(1.0, color='0.6', lw=0.8, ls=':')
    ax.set_yscale('log')
    ax.set_xlabel('block (input to output)')
    ax.set_title(TITLES[shortcut])
    ax.legend(frameon=False)
  axes[0].set_ylabel('mean ||F(x)|| / ||x||')
  fig.tight_layout()
  fig.savefig(workdir / 'identity_ratio.png')
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for kind, depth, rows in measured:
    stds = [r['std'] for r in rows]
    style = '-' if kind == 'A' else '--'
    label = f'{"ResNet" if kind == "A" else "plain"}-{depth}'
    axes[0].plot(range(1, len(stds) + 1), stds, style, color=colors[depth], label=label)
    axes[1].plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, color=colors[depth],
                 label=label)
  axes[0].set_xlabel('block (original order)')
  axes[1].set_xlabel('block (sorted by magnitude)')
  axes[0].set_ylabel('std of F(x)')
  axes[1].legend(frameon=False, ncol=2, title='dashed: plain, solid: ResNet')
  fig.suptitle('Response of each residual branch (He et al. 2015, Fig. 7)', fontsize=10)
  fig.tight_layout()
  fig.savefig(workdir / 'identity_std.png')
  plt.close(fig)


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  measured = []
  for run in sorted(runs, key=lambda r: (r.overrides['model.shortcut'],
                                         r.overrides['model.depth'])):
    if run.overrides.get('seed', 0) == min(r.overrides.get('seed', 0) for r in runs):
      measured.append((run.overrides['model.shortcut'], run.overrides['model.depth'],
                       measure(run)['blocks']))
  if not measured:
    return ''
  _figures(workdir, measured)
  rows = [[f'{"ResNet" if kind == "A" else "plain"}-{depth}',
           f'{np.mean([r["ratio"] for r in blocks]):.3f}',
           f'{np.median([r["ratio"] for r in blocks]):.3f}',
           f'{max(r["ratio"] for r in blocks):.3f}',
           f'{np.mean([r["std"] for r in blocks]):.3f}']
          for kind, depth, blocks in measured]
  return '\n'.join([
      '## Identity: how much each block changes its input (He et al. 2015, Fig. 7)', '',
      f'Over {PROBE_IMAGES} test images, first seed of each configuration.', '',
      report.markdown_table(['net', 'mean ||F(x)||/||x||', 'median', 'max', 'mean std of F(x)'],
                            rows), '',
      '![||F(x)|| / ||x|| per block](identity_ratio.png)', '',
      '![std of the branch responses](identity_std.png)'])
