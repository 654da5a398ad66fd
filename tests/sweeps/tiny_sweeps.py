"""What the sweep tests share: a tiny config and a sweep file to run it with."""

import textwrap
from pathlib import Path

from resnet_jax import schema
from resnet_jax.model import presets
from resnet_jax.sweeps import spec

SEEDS = [0, 1, 2, 3]


def tiny_config(data_dir, **overrides):
  """ResNet-8 on 80 images, 4 steps of 16: seconds per run on 8 simulated CPU devices."""
  config = schema.default_config()
  config.model = presets.preset('resnet20')
  config.model.depth = 8
  values = {'dataset.name': 'folder', 'dataset.path': str(data_dir), 'batch_size': 16,
            'eval_batch_size': 40, 'num_train_steps': 4, 'log_every_steps': 2,
            'checkpoint_every_steps': 2, 'eval_every_epochs': 0.4, 'lr_schedule': 'cosine',
            **overrides}
  config.lock()
  return spec.apply_overrides(config, values)


def write_sweep_file(path: Path, points_code: str) -> Path:
  path.write_text(textwrap.dedent(f'''
      from resnet_jax import schema, sweeps
      def get_config(arg=None):
        return schema.default_config()
      def get_sweep(arg=None):
        return {points_code}
      '''))
  return path
