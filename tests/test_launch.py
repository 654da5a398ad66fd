"""launch.py: one-line errors, the default workdir, and overrides that take effect."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import launch  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize('arguments, message', [
    (['--config=configs/wrn.py:quik'], "unknown config variant(s) ['quik']; allowed: dropout, zca, quick"),
    (['--config=configs/wrn.py', '--config.model.dept=3'],
     "unknown config key 'dept'; Did you mean \"depth\""),
    (['--config=configs/nowhere.py'], 'No such file or directory'),
    (['--config=configs/nowhere.py', '--config.seed=1'], 'No such file or directory'),
    (['--config=configs/wrn.py', '--config.batch_size=abc'], "invalid literal for int()"),
    (['--config=configs/wrn.py', '--config.model.width=0'], 'integer >= 1'),
    (['--config=configs/resnet_cifar.py', '--config.num_epochs=2', '--config.num_train_steps=9'],
     'num_epochs=2 and num_train_steps=9 are both set and num_train_steps wins; give one'),
])
def test_bad_command_lines_get_one_line_errors(arguments, message):
  result = subprocess.run([sys.executable, 'launch.py', *arguments, '--mode=summary'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr


def test_the_default_workdir_tells_runs_with_different_overrides_apart():
  names = [launch.default_workdir('configs/resnet_cifar.py', variant, overrides) for
           variant, overrides in (('', {}), ('', {'model.shortcut': 'none'}),
                                  ('quick', {'model.shortcut': 'none', 'model.depth': 56}),
                                  ('quick', {'model.depth': 56, 'model.shortcut': 'none'}))]
  assert names == ['runs/resnet_cifar', 'runs/resnet_cifar_shortcut=none',
                   'runs/resnet_cifar_quick_depth=56,shortcut=none',
                   'runs/resnet_cifar_quick_depth=56,shortcut=none']


def test_num_epochs_replaces_a_recipes_step_count_and_keeps_its_lr_drops_in_proportion():
  """He et al.: 64,000 steps, lr /10 at 32,000 and 48,000. Two epochs: drops at 1 and 1.5."""
  from resnet_jax.sweeps import spec
  config = spec.load_module(ROOT / 'configs' / 'resnet_cifar.py').get_config()
  config.num_epochs = 2
  line = launch._honour_num_epochs(config, {'num_epochs': 2})
  assert line == ("num_epochs=2 replaces the config's num_train_steps=64000; its lr boundaries "
                  'at steps 32000, 48000 (50%, 75% of the run) move to epochs 1, 1.5')
  assert (config.num_train_steps, config.num_epochs) == (-1, 2)
  assert (tuple(config.lr_boundaries_steps), tuple(config.lr_boundaries_epochs)) == ((), (1, 1.5))
