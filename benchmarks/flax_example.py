"""The Flax ImageNet example's ResNet on this machine: the reference of the '3x' CPU target.

    git clone https://github.com/google/flax /tmp/flax     # or any checkout of it
    python benchmarks/flax_example.py --models_py=/tmp/flax/examples/imagenet/models.py \
        --model=ResNet50 --image_size=128 --batch_size=16

Nothing of the example is copied here: its models.py is imported from the checkout given.
The step is the one its train.py runs (flax examples/imagenet/train.py `train_step`): the
model in training mode, softmax cross-entropy on one-hot labels plus 1e-4/2 x the squared
norm of every kernel, `jax.value_and_grad`, gradients and BN statistics averaged over the
'batch' axis of `jax.pmap` (one device here), and optax SGD with Nesterov momentum 0.9, on a
fixed synthetic float batch. XLA flags are applied as launch.py applies them (the chosen
XLA:CPU settings; RESNET_JAX_CPU_SETTINGS=xla_defaults for XLA's own), so both codes run
under the same flags. Prints one JSON line like `launch.py --mode=bench`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models_py', required=True,
                      help="path to a checkout's flax/examples/imagenet/models.py")
  parser.add_argument('--model', default='ResNet50')
  parser.add_argument('--image_size', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--warmup_steps', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  if not Path(args.models_py).is_file():
    sys.exit(f'error: --models_py={args.models_py} is not a file; pass the path of '
             'examples/imagenet/models.py in a checkout of github.com/google/flax')

  from resnet_jax import cpu_settings
  choice = cpu_settings.apply()
  import jax
  import jax.numpy as jnp
  import optax
  from jax import lax

  spec = importlib.util.spec_from_file_location('flax_example_models', args.models_py)
  models = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(models)
  model = getattr(models, args.model)(num_classes=args.num_classes, dtype=jnp.float32)
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  variables = model.init(jax.random.key(0), jnp.ones((1, *shape[1:])), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  tx = optax.sgd(learning_rate=0.1, momentum=0.9, nesterov=True)
  opt_state = tx.init(params)

  def train_step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, new_state = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                      mutable=['batch_stats'])
      one_hot = jax.nn.one_hot(labels, args.num_classes)
      loss = optax.softmax_cross_entropy(logits=logits, labels=one_hot).mean()
      l2 = sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(params) if x.ndim > 1)
      return loss + 1e-4 * 0.5 * l2, new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = lax.pmean(grads, axis_name='batch')
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    batch_stats = lax.pmean(new_state['batch_stats'], 'batch')
    return params, batch_stats, opt_state, loss

  step = jax.pmap(train_step, axis_name='batch', donate_argnums=(0, 1, 2))
  device = jax.local_devices()[:1]
  replicate = lambda tree: jax.device_put_replicated(tree, device) if hasattr(
      jax, 'device_put_replicated') else jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  state = replicate((params, batch_stats, opt_state))
  images = jax.random.normal(jax.random.key(1), (1, *shape))
  labels = jax.random.randint(jax.random.key(2), (1, args.batch_size), 0, args.num_classes)
  start = time.perf_counter()
  for _ in range(args.warmup_steps):
    *state, loss = step(*state, images, labels)
  jax.block_until_ready(loss)
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    *state, loss = step(*state, images, labels)
  jax.block_until_ready(loss)
  seconds = (time.perf_counter() - start) / args.steps
  print(json.dumps({
      'framework': f'flax example ({args.models_py})', 'model': args.model,
      'batch_size': args.batch_size, 'image_size': args.image_size,
      'xla_cpu_settings': (choice or {}).get('name', 'none'), 'warmup_s': warmup_s,
      'img_per_s': args.batch_size / seconds, 'step_time_s': seconds,
      'loss': float(loss[0]), 'jax': jax.__version__}))


if __name__ == '__main__':
  main()
