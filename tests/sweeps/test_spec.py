"""resnet_jax/sweeps/spec.py: spec helpers and their errors, point names, expansion."""

from pathlib import Path

import pytest

from resnet_jax import schema, sweeps
from resnet_jax.errors import SweepError
from resnet_jax.sweeps import spec


def test_axis_is_one_point_per_value():
  assert sweeps.axis('model.depth', [20, 32]) == [{'model.depth': 20}, {'model.depth': 32}]


def test_product_varies_the_first_axis_slowest():
  points = sweeps.product(sweeps.axis('model.depth', [20, 32]), sweeps.axis('seed', [0, 1]))
  assert points == [{'model.depth': 20, 'seed': 0}, {'model.depth': 20, 'seed': 1},
                    {'model.depth': 32, 'seed': 0}, {'model.depth': 32, 'seed': 1}]


def test_zip_pairs_axes_and_nests_in_product():
  pairs = sweeps.zip(sweeps.axis('model.depth', [16, 28]), sweeps.axis('model.width', [8, 10]))
  assert pairs == [{'model.depth': 16, 'model.width': 8}, {'model.depth': 28, 'model.width': 10}]
  assert len(sweeps.product(pairs, sweeps.axis('seed', [0, 1, 2]))) == 6


@pytest.mark.parametrize('build, message', [
    (lambda: sweeps.axis('model.depth', []), "axis 'model.depth' is empty"),
    (lambda: sweeps.axis('model.depth', 20), 'values must be a list'),
    (lambda: sweeps.zip(sweeps.axis('model.depth', [16, 28]), sweeps.axis('model.width', [8])),
     'model.depth has 2, model.width has 1 values'),
    (lambda: sweeps.product(sweeps.axis('seed', [0]), sweeps.axis('seed', [1])), "'seed' twice"),
])
def test_bad_specs_fail_with_one_line(build, message):
  with pytest.raises(SweepError, match=message) as error:
    build()
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('points, message', [
    ([{'model.dept': 20}], "unknown config path 'model.dept'; did you mean 'model.depth'"),
    ([{'optimiser': 'sgd'}], "unknown config path 'optimiser'"),
    ([{'model': 'resnet20'}], 'a group of keys'),
    ([{'model.depth': 'deep'}], "model.depth='deep', but model.depth holds int values"),
    ([{'model.depth': 21}], 'sweep point depth=21: model.depth=21 is not valid'),
    ([{'model.depth': 20}, {'model.depth': 20}], 'points 0 and 1 are the same'),
    ([], 'no points'),
])
def test_every_point_is_checked_against_the_config_before_anything_runs(points, message):
  with pytest.raises(SweepError, match=message):
    spec.expand(schema.default_config(), points, '/nonexistent')


def test_overrides_apply_to_a_copy():
  base = schema.default_config()
  changed = spec.apply_overrides(base, {'model.depth': 56, 'learning_rate': 1})
  assert (changed.model.depth, changed.learning_rate, base.model.depth) == (56, 1.0, 20)


# ----------------------------------------------------------------------------- names


def test_point_names_are_short_and_deterministic():
  points = sweeps.product(sweeps.axis('model.depth', [20]), sweeps.axis('model.shortcut', ['A']),
                         sweeps.axis('seed', [0]), sweeps.axis('learning_rate', [1e-4]))
  runs = spec.expand(schema.default_config(), points, '/w')
  assert runs[0].name == 'depth=20,shortcut=A,seed=0,learning_rate=0.0001'
  assert runs[0].workdir == Path('/w/depth=20,shortcut=A,seed=0,learning_rate=0.0001')


def test_point_names_keep_full_paths_where_last_keys_clash_and_are_filesystem_safe():
  point = {'model.width': 2, 'dataset.width': 3, 'dataset.path': '/data/c 10'}
  assert schema.point_name(point) == 'model.width=2,dataset.width=3,path=_data_c_10'
  long = schema.point_name({'dataset.path': 'x' * 300})
  assert len(long) <= 120 and long == schema.point_name({'dataset.path': 'x' * 300})


def test_config_argument_is_split_from_the_file():
  assert spec.split_config_argument('experiments/degradation.py:quick,seeds=3') == (
      'experiments/degradation.py', 'quick,seeds=3')
  assert spec.split_config_argument('configs/wrn.py') == ('configs/wrn.py', None)
