"""Gradient flow: per-layer gradient norms of plain vs residual nets, at initialisation and
over the first training steps (He et al. 2015, Sec. 4.1; He et al. 2016, Sec. 3).

For every residual block l it records ||dL/dx_l||, the gradient reaching the block's
output, and for every convolution ||dL/dW||. He et al. 2016 (Eq. 5) show why residual
nets pass gradients well: with identity skips, dL/dx_l = dL/dx_L (1 + d/dx_l sum F), so
the deep gradient reaches every shallow block directly. He et al. 2015 note that their
plain nets, trained with BN, do *not* simply have vanishing gradients ("healthy norms"),
yet are harder to optimise; the figures show how the gradient profile across depth
differs between the two and how it moves over the first steps.

This is a measurement, not a training sweep: each point runs `run_point` below (the
same initialisation, data and optimiser as training, no augmentation) instead of
`train.train_and_evaluate`.

Command:   python launch.py --config=experiments/gradient_flow.py --sweep \
               --workdir=runs/gradient_flow --config.dataset.path=<CIFAR-10>
           quick: :quick
Sweep:     depth 20/32/44/56/110 x shortcut none/A, 200 SGD steps of batch 128 at lr 0.1
           (the He et al. 2015 recipe), gradients recorded at steps 0, 1, 2, 5, 10, 20, 50,
           100, 200. :quick is depth 8/20/56, 10 steps of batch 64 on 4,096 images.
Expected:  at initialisation the plain nets' block gradients grow toward the input
           exponentially in depth (BN plain nets explode rather than vanish at step 0; :quick
           measured first/last block 2x at depth 8, 18x at 20, ~6,000x at 56), the residual
           nets' stay within ~20x. After a few SGD steps the deep plain net flips to the
           vanishing side (plain-56: first/last 0.06 at step 10) while the residual nets
           keep their profile; ResNet-56 without warm-up spikes in loss over those steps,
           which is why He et al. warm up ResNet-110.
Time:      :quick 42 s on an idle 2-core CPU; full: a few minutes on one GPU.
Output:    W/<point>/gradients.json, W/gradient_flow_init.png (block-gradient profile at
           step 0), W/gradient_flow_layers.png (per-convolution weight gradients at step 0),
           W/gradient_flow_steps.png (first-to-last block gradient ratio over the steps).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from experiments import common
from resnet_jax import report, sweep

DEPTHS = {'full': (20, 32, 44, 56, 110), 'cpu': (20, 56, 110), 'quick': (8, 20, 56)}
SHORTCUTS = ('none', 'A')
LABELS = {'none': 'plain', 'A': 'ResNet'}
TITLES = {'none': 'plain nets', 'A': 'residual nets (option A)'}
RECORD_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
GRADIENTS_FILE = 'gradients.json'


def get_config(arg=None):
  options = common.parse_arg(arg)
  config = common.he2015_cifar()  # lr 0.1 until iteration 32k: constant over these steps
  config.augment.crop_padding = 0
  config.augment.flip = False
  if options['quick']:
    config.dataset.max_train_examples = common.QUICK_TRAIN_EXAMPLES
    config.batch_size = 64
    config.num_train_steps = 10
  else:
    config.num_train_steps = 200
  config.log_every_steps = 1
  return config


def get_sweep(arg=None):
  return common.shortcut_depth_sweep(common.parse_arg(arg), SHORTCUTS, DEPTHS)


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
  from resnet_jax import models, train  # pylint: disable=g-import-not-at-top

  def loss_fn(params, perturbations, batch_stats, images, labels):
    def add_perturbation(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, models.ResidualBlock) and context.method_name == '__call__':
        out = out + perturbations[context.module.name]
      return out

    with nn.intercept_methods(add_perturbation):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                    train=True, mutable=['batch_stats'])
    return train.cross_entropy(logits, labels, num_classes).mean(), updates['batch_stats']

  def gradients(params, batch_stats, images, labels):
    def shapes():
      _, state = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False,
                             capture_intermediates=lambda m, name: isinstance(
                                 m, models.ResidualBlock), mutable=['intermediates'])
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
  from resnet_jax import augment, datasets, optim, presets  # pylint: disable=g-import-not-at-top

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  dataset = datasets.load_in_memory(config.dataset, seed=config.seed)
  num_train = len(dataset.train.labels)
  total_steps = config.num_train_steps
  steps_per_epoch = max(1, num_train // config.batch_size)
  model = presets.build_model(config.model, dataset.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps)
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # as train.create_train_state
  size = config.dataset.image_size
  variables = model.init(init_key, jnp.zeros((1, size, size, 3)), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  block_names = common.block_names(config.model, 'gradient_flow')
  gradients = make_gradient_fn(model, dataset.num_classes, block_names)
  update = jax.jit(lambda grads, opt_state, params: tx.update(grads, opt_state, params))

  records = []
  loss = math.nan
  for step in range(total_steps + 1):
    indices = datasets.train_batch_indices(config.seed, step, num_train, config.batch_size)
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
    if step == total_steps:
      break
    updates, opt_state = update(param_grads, opt_state, params)
    params, batch_stats = optax.apply_updates(params, updates), new_batch_stats

  convs = [name for name, _ in _conv_kernels(params)]
  common.write_json(workdir / GRADIENTS_FILE,
                    {'blocks': block_names, 'convs': convs, 'records': records})
  first = records[0]['block_grad_norm']
  results = {'model': presets.model_name(config.model), 'step': total_steps,
             'loss_at_init': records[0]['loss'], 'loss_at_end': records[-1]['loss'],
             'block_grad_ratio_at_init': first[0] / first[-1] if first[-1] else None,
             'stem_grad_norm_at_init': records[0]['conv_grad_norm'][0],
             'wall_s': time.time() - start}
  common.write_json(workdir / sweep.RESULTS_FILE, results)
  print(f'  {results["model"]}: block gradient first/last at init '
        f'{results["block_grad_ratio_at_init"]:.3g}, loss {results["loss_at_init"]:.3f} -> '
        f'{results["loss_at_end"]}', flush=True)
  return results


# ----------------------------------------------------------------------------- figures


def _load(runs):
  data = []
  for run in runs:
    path = run.workdir / GRADIENTS_FILE
    if path.exists():
      data.append((run.overrides['model.shortcut'], run.overrides['model.depth'],
                   json.loads(path.read_text())))
  return data


def _profile_figure(path, data, key: str, ylabel: str, title: str) -> None:
  """Step-0 gradient norm per block (or conv), input left to output right, per depth."""
  plt = common.pyplot()
  colors = common.depth_colors([depth for _, depth, _ in data])
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, shortcut in zip(axes, SHORTCUTS):
    for kind, depth, gradients in sorted(data, key=lambda item: item[1]):
      if kind != shortcut:
        continue
      norms = np.asarray(gradients['records'][0][key], float)
      position = np.linspace(0, 1, len(norms))
      ax.plot(position, norms / norms[-1], color=colors[depth], marker='.', ms=3,
              label=f'{LABELS[shortcut]}-{depth}')
    ax.set_yscale('log')
    ax.set_xlabel('relative depth (0 = first block, 1 = last)')
    ax.set_title(TITLES[shortcut])
    ax.legend(frameon=False)
  axes[0].set_ylabel(ylabel)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _steps_figure(path, data) -> None:
  plt = common.pyplot()
  colors = common.depth_colors([depth for _, depth, _ in data])
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for shortcut, depth, gradients in sorted(data, key=lambda item: (item[0], item[1])):
    records = gradients['records']
    steps = np.asarray([r['step'] for r in records], float)
    ratio = [r['block_grad_norm'][0] / r['block_grad_norm'][-1] for r in records]
    loss = [np.nan if r['loss'] is None else r['loss'] for r in records]
    style = '-' if shortcut == 'A' else '--'
    label = f'{LABELS[shortcut]}-{depth}'
    axes[0].plot(steps + 1, ratio, style, marker='o', ms=3, color=colors[depth], label=label)
    axes[1].plot(steps + 1, loss, style, marker='o', ms=3, color=colors[depth], label=label)
  axes[0].set_title('Gradient at the first block relative to the last')
  axes[1].set_title('Training loss on the step\'s batch')
  axes[0].set_ylabel('||dL/dx_first|| / ||dL/dx_last||')
  axes[0].set_yscale('log')
  axes[1].set_ylabel('training loss (batch)')
  for ax in axes:
    ax.set_xscale('log')
    ax.set_xlabel('step + 1')
  axes[1].legend(frameon=False, ncol=2, title='dashed: plain, solid: ResNet')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def analyze(workdir, runs) -> str:
  data = _load(runs)
  if not data:
    return ''
  _profile_figure(workdir / 'gradient_flow_init.png', data, 'block_grad_norm',
                  '||dL/dx_l|| / ||dL/dx_last||', 'Gradient reaching each block at initialisation')
  _profile_figure(workdir / 'gradient_flow_layers.png', data, 'conv_grad_norm',
                  '||dL/dW|| / last conv', 'Weight gradient per convolution at initialisation')
  _steps_figure(workdir / 'gradient_flow_steps.png', data)
  rows = []
  for shortcut, depth, gradients in sorted(data, key=lambda item: (item[1], item[0])):
    first, last = gradients['records'][0], gradients['records'][-1]
    norms = np.asarray(first['block_grad_norm'])
    rows.append([f'{LABELS[shortcut]}-{depth}', f'{norms[0] / norms[-1]:.3g}',
                 f'{norms.max() / norms.min():.3g}',
                 f'{last["block_grad_norm"][0] / last["block_grad_norm"][-1]:.3g}',
                 f'{first["loss"]:.3f}' if first['loss'] is not None else '–',
                 f'{last["loss"]:.3f}' if last['loss'] is not None else 'diverged',
                 last['step']])
  return '\n'.join([
      '## Gradient flow', '',
      'Block-output gradient norms ||dL/dx_l|| at initialisation (first block / last block, '
      'and the spread max/min over all blocks), the same ratio after the last recorded step, '
      'and the batch loss at both ends.', '',
      report.markdown_table(['net', 'first/last at init', 'max/min at init',
                             'first/last at end', 'loss at init', 'loss at end', 'steps'], rows),
      '', '![block gradients at initialisation](gradient_flow_init.png)', '',
      '![weight gradients at initialisation](gradient_flow_layers.png)', '',
      '![gradient ratio and loss over the first steps](gradient_flow_steps.png)'])
