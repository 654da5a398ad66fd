"""Gradient flow: the gradient reaching every block of plain and residual nets, with and
without BatchNorm, at initialisation and over the first SGD steps (He et al. 2015,
Sec. 4.1; He et al. 2016, Sec. 3).

For every residual block l it records ||dL/dx_l||, the gradient of the loss with respect
to the block's output, and for every convolution ||dL/dW||. The classic account of why
deep plain nets are hard to train is that gradients vanish toward the input. He et al.
2015 (Sec. 4.1) argue that with BatchNorm this is not the cause of the degradation they
see ("we also verify that the backward propagated gradients exhibit healthy norms with
BN"). He et al. 2016 (Eq. 5) show how identity skips carry the deep gradient to every
shallow block. This experiment measures all three: plain nets without normalisation
(`model.norm='none'`), plain nets with BN, and their residual twins.

This is a measurement, not a training sweep: each point runs `run_point` below (the
same initialisation and data as training, no augmentation, SGD at a constant lr 0.1 with
no warm-up for every point, so depth is not confounded with the schedule) instead of
`train.train_and_evaluate`.

Command:   python launch.py --config=experiments/gradient_flow.py --sweep \
               --workdir=runs/gradient_flow --config.dataset.path=<CIFAR-10>
           quick: :quick ; cpu: :cpu
Sweep:     norm batch/none x shortcut none/A x depth 20/32/44/56/110, 200 SGD steps of
           batch 128 at lr 0.1, gradients recorded at steps 0, 1, 2, 5, 10, 20, 50, 100,
           200. :cpu is depth 20/56/110, seeds 0/1, 20 steps on all 50,000 training
           images. :quick is depth 8/20, 2 steps of batch 64 on 4,096 images.
Expected:  no table in the papers. Without normalisation the plain nets' gradient should
           shrink toward the input, more with depth (the vanishing gradient of Glorot &
           Bengio 2010); with BN, He et al. 2015 report "healthy norms", and mean-field
           theory predicts BN plain nets' gradients to grow toward the input at
           initialisation (Yang et al. 2019, "A Mean Field Theory of Batch
           Normalization"); with identity skips the profile should stay close to flat
           (He et al. 2016, Eq. 5).
Measured:  :cpu on ../shared/data/cifar10-jpg.tar.gz, seeds 0/1, AMD EPYC (avx2, avx512f),
           2 cores; first-block over last-block gradient at initialisation, median of 2:
           without normalisation plain-20/56/110 0.36 / 0.22 / 0.027 (it vanishes toward
           the input, more with depth); with BN plain-20/56/110 17 / 4.9e3 / 2.3e7 (it
           explodes toward the input: the BN-at-init effect, not healthy norms);
           ResNet-20/56/110 with BN 4.7 / 16 / 39 (far flatter than plain, not flat);
           ResNets without normalisation blow up in the forward pass (initial loss 9e3
           at depth 56, 1e8 at 110). Table and figures: experiments/results/gradient_flow/.
Time:      :cpu 13 min 19 s on that CPU (24 points, the test suite running beside it for
           11 of them); :quick under a minute; full: a few minutes on one GPU.
Output:    W/<point>/gradients.json, W/gradient_flow_init.png (block-gradient profile at
           step 0, per norm and shortcut), W/gradient_flow_steps.png (first-to-last block
           gradient ratio and loss over the steps), and the table in W/report.md.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from configs import recipes
from experiments import common
from resnet_jax import metrics, sweeps
from resnet_jax.sweeps import report

DEPTHS = {'full': (20, 32, 44, 56, 110), 'cpu': (20, 56, 110), 'quick': (8, 20)}
NORMS = ('batch', 'none')
SHORTCUTS = ('none', 'A')
STEPS = {'full': 200, 'cpu': 20, 'quick': 2}
LABELS = {'none': 'plain', 'A': 'ResNet'}
NORM_LABELS = {'batch': 'with BN', 'none': 'without normalisation'}
RECORD_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
GRADIENTS_FILE = 'gradients.json'


def get_config(arg=None):
  options = common.options(arg)
  config = common.he2015_cifar()
  config.augment.crop_padding = 0
  config.augment.flip = False
  # One schedule for every point: lr 0.1, constant over these steps (the recipe's lr until
  # iteration 32k), and no warm-up, which the recipe would add at depth 110 only.
  config.lr_schedule = 'constant'
  config.constant_warmup_steps = 0
  config.num_train_steps = STEPS[common.size(options)]
  if options['quick']:
    config.dataset.max_train_examples = recipes.QUICK_TRAIN_EXAMPLES
    config.batch_size = 64
  config.log_every_steps = 1
  return config


def get_sweep(arg=None):
  options = common.options(arg)
  return sweeps.product(sweeps.axis('model.norm', list(NORMS)),
                       common.shortcut_depth_sweep(options, SHORTCUTS, DEPTHS))


# ----------------------------------------------------------------------------- measurement


def _conv_kernels(params) -> list[tuple[str, object]]:
  """(name, kernel) of every convolution, from the input to the output (creation order)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(params, sep='/')
  return [(name[:-len('/kernel')], value) for name, value in flat.items()
          if name.endswith('/kernel') and 'conv' in name.rsplit('/', 2)[-2]]


def make_gradient_fn(model, num_classes: int, block_names: list[str]):
  """jit((params, batch_stats, images, labels) -> (loss, batch_stats, param grads,
  {block: dL/d output})). Block-output gradients come from a zero perturbation added to
  each block's output by a Flax method interceptor: d loss / d perturbation = dL/dx_l."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  from resnet_jax.model import ResidualBlock  # pylint: disable=g-import-not-at-top

  def loss_fn(params, perturbations, batch_stats, images, labels):
    def add_perturbation(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, ResidualBlock) and context.method_name == '__call__':
        out = out + perturbations[context.module.name]
      return out

    with nn.intercept_methods(add_perturbation):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                    train=True, mutable=['batch_stats'])
    return train.cross_entropy(logits, labels, num_classes).mean(), updates.get('batch_stats', {})

  def gradients(params, batch_stats, images, labels):
    def shapes():
      _, state = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False,
                             capture_intermediates=lambda m, name: isinstance(
                                 m, ResidualBlock), mutable=['intermediates'])
      return {name: state['intermediates'][name]['__call__'][0] for name in block_names}

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))
    (loss, batch_stats), (param_grads, block_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, zeros, batch_stats, images, labels)
    return loss, batch_stats, param_grads, block_grads

  return jax.jit(gradients)


def run_point(config, workdir) -> dict:
  """Trains `num_train_steps` SGD steps and records per-layer gradient norms on the way."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from resnet_jax import optim  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import augment, batching, in_memory  # pylint: disable=g-import-not-at-top
  from resnet_jax.model import build_model, model_name  # pylint: disable=g-import-not-at-top

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  dataset = in_memory.load(config.dataset, seed=config.seed)
  num_train = len(dataset.train.labels)
  total_steps = config.num_train_steps
  steps_per_epoch = max(1, num_train // config.batch_size)
  model = build_model(config.model, dataset.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps)
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # as train.create_train_state
  size = config.dataset.image_size
  variables = model.init(init_key, jnp.zeros((1, size, size, 3)), train=False)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  opt_state = tx.init(params)
  block_names = common.block_names(config.model, 'gradient_flow')
  gradients = make_gradient_fn(model, dataset.num_classes, block_names)
  update = jax.jit(lambda grads, opt_state, params: tx.update(grads, opt_state, params))

  records = []
  loss = math.nan
  diverged_at = None
  for step in range(total_steps + 1):
    indices = batching.train_batch_indices(config.seed, step, num_train, config.batch_size)
    images = augment.normalize(dataset.train.images[indices], dataset.mean, dataset.std)
    labels = dataset.train.labels[indices]
    loss, new_batch_stats, param_grads, block_grads = gradients(params, batch_stats, images,
                                                                labels)
    loss = float(loss)
    if step in RECORD_STEPS or step == total_steps:
      records.append({
          'step': step, 'loss': loss if math.isfinite(loss) else None,
          'block_grad_norm': [float(jnp.linalg.norm(block_grads[name])) for name in block_names],
          'conv_grad_norm': [float(jnp.linalg.norm(g)) for _, g in _conv_kernels(param_grads)],
      })
    if not math.isfinite(loss):  # nothing after this step would mean anything
      diverged_at = step
      if records[-1]['step'] != step:
        records.append({'step': step, 'loss': None, 'block_grad_norm': None,
                        'conv_grad_norm': None})
      break
    if step == total_steps:
      break
    updates, opt_state = update(param_grads, opt_state, params)
    params, batch_stats = optax.apply_updates(params, updates), new_batch_stats

  convs = [name for name, _ in _conv_kernels(params)]
  common.write_json(workdir / GRADIENTS_FILE,
                    {'blocks': block_names, 'convs': convs, 'records': records})
  first = records[0]['block_grad_norm']
  results = {'model': model_name(config.model), 'step': total_steps,
             'loss_at_init': records[0]['loss'], 'loss_at_end': records[-1]['loss'],
             'block_grad_ratio_at_init': first_to_last(records[0]),
             'stem_grad_norm_at_init': records[0]['conv_grad_norm'][0],
             'diverged_at_step': diverged_at, 'wall_s': time.time() - start}
  common.write_json(workdir / metrics.RESULTS_FILE, results)
  print(f'  {results["model"]}: block gradient first/last at init '
        f'{results["block_grad_ratio_at_init"]:.3g}, loss {results["loss_at_init"]} -> '
        f'{results["loss_at_end"]}' + (f' (diverged at step {diverged_at})'
                                        if diverged_at is not None else ''), flush=True)
  return results


def first_to_last(record) -> float:
  """||dL/dx_first block|| / ||dL/dx_last block||: < 1 the gradient shrinks toward the input
  (vanishes), > 1 it grows (explodes); NaN where it was not finite."""
  norms = record.get('block_grad_norm')
  if not norms or not norms[-1] or not all(math.isfinite(n) for n in norms):
    return math.nan
  return norms[0] / norms[-1]


# ----------------------------------------------------------------------------- figures


def _load(runs):
  """(norm, shortcut, depth, seed, gradients) of every measured point."""
  data = []
  for run in runs:
    path = run.workdir / GRADIENTS_FILE
    if path.exists():
      data.append((run.overrides.get('model.norm', 'batch'), run.overrides['model.shortcut'],
                   run.overrides['model.depth'], run.overrides.get('seed', 0),
                   json.loads(path.read_text())))
  return data


def _init_figure(path, data) -> None:
  """Step-0 ||dL/dx_l|| / ||dL/dx_last|| per block, input left to output right: one panel
  per (norm, shortcut), one line per depth (the geometric mean over seeds)."""
  plt = common.pyplot()
  norms = [n for n in NORMS if any(d[0] == n for d in data)]
  colors = common.depth_colors([d[2] for d in data])
  fig, axes = plt.subplots(len(norms), 2, figsize=(9, 3.3 * len(norms)), squeeze=False)
  for row, norm in enumerate(norms):
    for col, shortcut in enumerate(SHORTCUTS):
      ax = axes[row][col]
      for depth in sorted({d[2] for d in data}):
        profiles = [np.asarray(g['records'][0]['block_grad_norm'], float) for n, s, dd, _, g
                    in data if (n, s, dd) == (norm, shortcut, depth)]
        profiles = [p / p[-1] for p in profiles if np.all(np.isfinite(p)) and p[-1] > 0]
        if not profiles:
          continue
        profile = np.exp(np.mean(np.log(profiles), axis=0))
        ax.plot(np.linspace(0, 1, len(profile)), profile, color=colors[depth], marker='.',
                ms=3, label=f'{LABELS[shortcut]}-{depth}')
      ax.axhline(1.0, color='0.6', lw=0.8, ls=':')
      ax.set_yscale('log')
      ax.set_title(f'{LABELS[shortcut]} nets {NORM_LABELS[norm]}')
      ax.set_xlabel('relative depth (0 = first block, 1 = last)')
      ax.legend(frameon=False)
    axes[row][0].set_ylabel('||dL/dx_l|| / ||dL/dx_last||')
  fig.suptitle('Gradient reaching each block at initialisation (above 1: larger than at the '
               'last block)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _steps_figure(path, data) -> None:
  plt = common.pyplot()
  colors = common.depth_colors([d[2] for d in data])
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for norm, shortcut, depth, seed, gradients in sorted(data, key=lambda d: d[:4]):
    if seed != min(d[3] for d in data):
      continue
    records = gradients['records']
    steps = np.asarray([r['step'] for r in records], float)
    ratio = [first_to_last(r) for r in records]
    loss = [np.nan if r['loss'] is None else r['loss'] for r in records]
    style = ('-' if shortcut == 'A' else '--') if norm == 'batch' else ':'
    label = f'{LABELS[shortcut]}-{depth}' + ('' if norm == 'batch' else ' no norm')
    axes[0].plot(steps + 1, ratio, style, marker='o', ms=3, color=colors[depth], label=label)
    axes[1].plot(steps + 1, loss, style, marker='o', ms=3, color=colors[depth], label=label)
  axes[0].set_title('Gradient at the first block relative to the last')
  axes[1].set_title('Training loss on the step\'s batch')
  axes[0].set_ylabel('||dL/dx_first|| / ||dL/dx_last||')
  axes[1].set_ylabel('training loss (batch)')
  for ax in axes:
    ax.set_yscale('log')
    ax.set_xscale('log')
    ax.set_xlabel('step + 1')
  axes[1].legend(frameon=False, ncol=2, fontsize=6,
                 title='BN: dashed plain, solid ResNet; dotted: no norm')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _range(values) -> str:
  """'median (min-max)' over seeds, 3 significant digits."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return '–'
  if len(values) == 1:
    return f'{values[0]:.3g}'
  return f'{np.median(values):.3g} ({min(values):.3g}-{max(values):.3g})'


def analyze(workdir, runs) -> str:
  data = _load(runs)
  if not data:
    return ''
  _init_figure(workdir / 'gradient_flow_init.png', data)
  _steps_figure(workdir / 'gradient_flow_steps.png', data)
  groups = {}
  for norm, shortcut, depth, _, gradients in data:
    groups.setdefault((norm, shortcut, depth), []).append(gradients['records'])
  rows = []
  for (norm, shortcut, depth), seeds in sorted(groups.items(),
                                               key=lambda item: (item[0][0], item[0][1],
                                                                 item[0][2])):
    last_step = min(records[-1]['step'] for records in seeds)
    at_last = [next((r for r in records if r['step'] == last_step), records[-1])
               for records in seeds]
    spread = lambda r: (max(r['block_grad_norm']) / min(r['block_grad_norm'])
                        if r['block_grad_norm'] and min(r['block_grad_norm']) > 0 else math.nan)
    rows.append([f'{LABELS[shortcut]}-{depth}', NORM_LABELS[norm], len(seeds),
                 _range(first_to_last(records[0]) for records in seeds),
                 _range(spread(records[0]) for records in seeds),
                 _range(records[0]['loss'] for records in seeds),
                 last_step,
                 _range(first_to_last(r) for r in at_last),
                 _range(r['loss'] for r in at_last)])
  return '\n'.join([
      '## Gradient flow', '',
      'Block-output gradient norms ||dL/dx_l||: the first block over the last (below 1: the '
      'gradient shrinks toward the input; above 1: it grows) and the spread max/min over all '
      'blocks, at initialisation and after the last step all seeds reached; the batch loss. '
      'Median over seeds (min-max).', '',
      report.markdown_table(['net', 'normalisation', 'seeds', 'first/last at init',
                             'max/min at init', 'loss at init', 'step', 'first/last there',
                             'loss there'], rows),
      '', '![block gradients at initialisation](gradient_flow_init.png)', '',
      '![gradient ratio and loss over the first steps](gradient_flow_steps.png)'])
