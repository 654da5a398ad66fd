"""Residual functions are close to zero: the std of every 3x3 layer's response
(He et al. 2015, Sec. 4.2, Fig. 7).

He et al. argue that if identity mappings are near-optimal, the solver drives the residual
functions toward zero. Fig. 7 plots, for plain-20/56 and ResNet-20/56/110 trained on
CIFAR-10, the standard deviation of each 3x3 layer's response, "the outputs of each 3x3
layer, after BN and before other nonlinearity (ReLU/addition)", once by layer index and
once sorted in descending order: the ResNets' responses are smaller than the plain nets',
and the deeper ResNet's are smaller still.

This measures exactly that, on PROBE_IMAGES test images with the network in inference
mode (BN with its running statistics): for every 3x3 convolution from the stem to the last
block, the std over all elements (images, positions, channels) of the BN output that
follows it. Pre-activation units have their BN before the convolution; for them (and for
`model.norm='none'`) the response is the 3x3 convolution's own output. Layers are read
with Flax's `capture_intermediates`; nothing in the model changes.

Command:   python launch.py --config=experiments/identity.py --sweep \
               --workdir=runs/identity --config.dataset.path=<CIFAR-10>
           quick: :quick ; seeds: :seeds=3
Sweep:     plain-20/56 and ResNet-20/56/110 (option A) with the He et al. 2015 recipe (64k
           iterations). :cpu trains plain-20/56 and ResNet-20/56 (seeds 0/1; not ResNet-110)
           for 2 epochs on a fixed 20,000 of the real training images with
           configs/resnet_cifar.py:cpu's schedule and the warm-up of experiments/common.py.
           :quick is plain-8/20 and ResNet-8/20 on 4,096 training images for 2 epochs at
           batch 32, a plumbing check.
Expected:  Fig. 7 (a figure, no table): ResNet responses below the plain nets' at every
           layer index once sorted; ResNet-110 below ResNet-56 below ResNet-20.
Measured:  :cpu on ../shared/data/cifar10-jpg.tar.gz, AMD EPYC (avx2, avx512f), 2 cores;
           mean std over the 3x3 layers, seed 0 / seed 1: plain-20 1.05 / 1.11, ResNet-20
           0.93 / 1.00 (below plain on both seeds, as Fig. 7); plain-56 0.73 / 1.21,
           ResNet-56 0.73 / 1.83 (not below plain; the seeds disagree by more than the
           effect), so the 56-layer half of Fig. 7 and "smaller with depth" are not shown
           after 312 steps. Test error: plain-20/56 55.7 / 73.4%, ResNet-20/56 40.4 /
           45.9% (mean of 2). Table and figure: experiments/results/identity/.
Time:      :cpu 28 min 33 s on that CPU (the test suite sharing it for 10 of them);
           :quick 3 min on an idle 2-core CPU (training; the analysis takes seconds).
Output:    W/<point>/responses.json, W/responses_std.png (Fig. 7: by layer index, and
           sorted), and the per-net table in W/report.md.
"""

from __future__ import annotations

import json

import numpy as np

from experiments import common
from resnet_jax import sweeps
from resnet_jax.sweeps import report

# (shortcut, depth) of Fig. 7: plain-20/56 and ResNet-20/56/110.
NETS = {'full': (('none', 20), ('none', 56), ('A', 20), ('A', 56), ('A', 110)),
        'quick': (('none', 8), ('none', 20), ('A', 8), ('A', 20))}
# :cpu leaves out ResNet-110 (two seeds of it are 14 of the sweep's 33 minutes on this
# project's CPU): the plain-vs-residual and 20-vs-56 comparisons of Fig. 7 remain.
NETS['cpu'] = NETS['full'][:4]
CPU_EPOCHS, CPU_TRAIN_EXAMPLES = 2, 20_000
PROBE_IMAGES = 500
RESPONSES_FILE = 'responses.json'
LABELS = {'none': 'plain', 'A': 'ResNet'}


def get_config(arg=None):
  return common.sized(common.he2015_cifar(), common.options(arg), epochs=CPU_EPOCHS,
                      train_examples=CPU_TRAIN_EXAMPLES, evaluations=2)


def get_sweep(arg=None):
  options = common.options(arg)
  nets = NETS[common.size(options)]
  return sweeps.product(sweeps.zip(sweeps.axis('model.shortcut', [s for s, _ in nets]),
                                 sweeps.axis('model.depth', [d for _, d in nets])),
                       common.seeds(options))


def response_layers(config) -> list[tuple[str, str]]:
  """(scope, module name) of every 3x3 layer's response, from the input to the output."""
  from resnet_jax.model import ResidualBlock, architecture  # pylint: disable=g-import-not-at-top
  block_config = architecture(config.model)['block_config']
  after_bn = not block_config.preact and block_config.norm != 'none'
  layers = [('', 'stem_bn' if after_bn else 'stem_conv')]
  for block in common.block_names(config.model, 'identity'):
    kernels = ResidualBlock(planes=1, config=block_config)._branch_layers()
    layers += [(block, f'bn{i}' if after_bn else f'conv{i}')
               for i, (_, kernel, _) in enumerate(kernels, 1) if kernel == 3]
  return layers


def layer_responses(config, variables, images, num_classes: int) -> list[dict[str, float]]:
  """Per 3x3 layer, from the input to the output: the std of its response (Fig. 7)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resnet_jax.model import build_model  # pylint: disable=g-import-not-at-top
  layers = response_layers(config)
  model = build_model(config.model, num_classes)
  wanted_names = {name for _, name in layers}

  @jax.jit
  def capture(variables, images):
    _, state = model.apply(variables, images, train=False, mutable=['intermediates'],
                           capture_intermediates=lambda module, method: (
                               method == '__call__' and module.name in wanted_names))
    return state['intermediates']

  captured = capture(variables, images)
  rows = []
  for scope, name in layers:
    response = (captured[scope] if scope else captured)[name]['__call__'][0]
    rows.append({'layer': f'{scope}/{name}' if scope else name,
                 'std': float(jnp.std(response.astype(jnp.float32)))})
  return rows


def measure(run) -> dict:
  """responses.json of a finished run (computed once, from its final checkpoint)."""
  path = run.workdir / RESPONSES_FILE
  if path.exists():
    return json.loads(path.read_text())
  images, _, num_classes = common.test_images(run.config, PROBE_IMAGES)
  measured = {'layers': layer_responses(run.config, common.restore_variables(run), images,
                                        num_classes)}
  common.write_json(path, measured)
  return measured


def _figure(path, measured) -> None:
  """Fig. 7: std per 3x3 layer in network order (top) and sorted descending (bottom)."""
  plt = common.pyplot()
  colors = common.depth_colors([depth for _, depth, _ in measured])
  fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.0))
  for shortcut, depth, rows in measured:
    stds = [row['std'] for row in rows]
    style = '-' if shortcut != 'none' else '--'
    label = f'{LABELS.get(shortcut, shortcut)}-{depth}'
    axes[0].plot(range(1, len(stds) + 1), stds, style, color=colors[depth], label=label, lw=1.2)
    axes[1].plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, color=colors[depth],
                 label=label, lw=1.2)
  axes[0].set_xlabel('layer index (original order)')
  axes[1].set_xlabel('layer index (sorted by magnitude)')
  for ax in axes:
    ax.set_ylabel('std')
  axes[0].legend(frameon=False, ncol=2, title='dashed: plain, solid: ResNet')
  fig.suptitle('Std of each 3x3 layer\'s response (He et al. 2015, Fig. 7)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  if not runs:
    return ''
  by_net = {}
  for run in runs:
    by_net.setdefault((run.overrides['model.shortcut'], run.overrides['model.depth']),
                      []).append(measure(run)['layers'])
  first_seed = [(shortcut, depth, seeds[0]) for (shortcut, depth), seeds in sorted(
      by_net.items(), key=lambda item: (item[0][0] != 'none', item[0][1]))]
  _figure(workdir / 'responses_std.png', first_seed)

  rows = []
  for (shortcut, depth), seeds in sorted(by_net.items(),
                                         key=lambda item: (item[0][0] != 'none', item[0][1])):
    means = [float(np.mean([row['std'] for row in layers])) for layers in seeds]
    medians = [float(np.median([row['std'] for row in layers])) for layers in seeds]
    rows.append([f'{LABELS.get(shortcut, shortcut)}-{depth}', len(seeds[0]), len(seeds),
                 report.format_mean_std(means), report.format_mean_std(medians)])
  return '\n'.join([
      '## Layer responses (He et al. 2015, Fig. 7)', '',
      f'Std of each 3x3 layer\'s response over {PROBE_IMAGES} test images (inference mode), '
      'averaged over the layers of each net; mean ± std over seeds where there are several. '
      'The figure shows the first seed.', '',
      report.markdown_table(['net', '3x3 layers', 'seeds', 'mean std over layers',
                             'median std over layers'], rows), '',
      '![std of each 3x3 layer response, in order and sorted](responses_std.png)'])
