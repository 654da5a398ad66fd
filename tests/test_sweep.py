"""Sweeps: spec helpers and their errors, names, grouping, resume, vmapped groups, submitit."""

import csv
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax import sweep, sweep_batched, train
from resnet_jax.model import presets
from resnet_jax.errors import SweepError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


def write_image_folder(root: Path, per_class: int = 8, test_per_class: int = 4,
                       classes: int = 10) -> Path:
  """A tiny CIFAR-shaped image-folder dataset; the data is the same for every seed."""
  rng = np.random.default_rng(0)
  for split, count in (('train', per_class), ('test', test_per_class)):
    for c in range(classes):
      folder = root / split / f'class{c}'
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[..., c % 3] = 40 * (c + 1) % 256  # a learnable colour cue per class
        Image.fromarray(pixels).save(folder / f'{i}.png')
  return root


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
  return write_image_folder(tmp_path_factory.mktemp('images'))


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
  """Dataset and compilation caches in the test's temporary area, shared by the module."""
  monkeypatch.setenv('RESNET_JAX_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


def tiny_config(data_dir, **overrides):
  """ResNet-8 on 80 images, 4 steps of 16: seconds per run on 8 simulated CPU devices."""
  config = config_lib.default_config()
  config.model = presets.preset('resnet20')
  config.model.depth = 8
  values = {'dataset.name': 'folder', 'dataset.path': str(data_dir), 'batch_size': 16,
            'eval_batch_size': 40, 'num_train_steps': 4, 'log_every_steps': 2,
            'checkpoint_every_steps': 2, 'eval_every_epochs': 0.4, 'lr_schedule': 'cosine',
            **overrides}
  config.lock()
  return sweep.apply_overrides(config, values)


def write_sweep_file(path: Path, points_code: str) -> Path:
  path.write_text(textwrap.dedent(f'''
      from resnet_jax import config as config_lib, sweep
      def get_config(arg=None):
        return config_lib.default_config()
      def get_sweep(arg=None):
        return {points_code}
      '''))
  return path


# ----------------------------------------------------------------------------- spec


def test_axis_is_one_point_per_value():
  assert sweep.axis('model.depth', [20, 32]) == [{'model.depth': 20}, {'model.depth': 32}]


def test_product_varies_the_first_axis_slowest():
  points = sweep.product(sweep.axis('model.depth', [20, 32]), sweep.axis('seed', [0, 1]))
  assert points == [{'model.depth': 20, 'seed': 0}, {'model.depth': 20, 'seed': 1},
                    {'model.depth': 32, 'seed': 0}, {'model.depth': 32, 'seed': 1}]


def test_zip_pairs_axes_and_nests_in_product():
  pairs = sweep.zip(sweep.axis('model.depth', [16, 28]), sweep.axis('model.width', [8, 10]))
  assert pairs == [{'model.depth': 16, 'model.width': 8}, {'model.depth': 28, 'model.width': 10}]
  assert len(sweep.product(pairs, sweep.axis('seed', [0, 1, 2]))) == 6


@pytest.mark.parametrize('build, message', [
    (lambda: sweep.axis('model.depth', []), "axis 'model.depth' is empty"),
    (lambda: sweep.axis('model.depth', 20), 'values must be a list'),
    (lambda: sweep.zip(sweep.axis('model.depth', [16, 28]), sweep.axis('model.width', [8])),
     'model.depth has 2, model.width has 1 values'),
    (lambda: sweep.product(sweep.axis('seed', [0]), sweep.axis('seed', [1])), "'seed' twice"),
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
    sweep.expand(config_lib.default_config(), points, '/nonexistent')


def test_bad_spec_stops_the_sweep_before_any_training(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', pytest.fail)
  spec = write_sweep_file(tmp_path / 'spec.py',
                          "sweep.axis('model.depth', [20, 21])")
  with pytest.raises(SweepError, match='depth=21'):
    sweep.main(config_lib.default_config(), str(spec), tmp_path / 'w')
  assert not (tmp_path / 'w').exists()


def test_a_config_file_without_get_sweep_is_a_clear_error(tmp_path):
  with pytest.raises(SweepError, match='has no get_sweep'):
    sweep.main(config_lib.default_config(), str(ROOT / 'configs/resnet_cifar.py'), tmp_path)


def test_overrides_apply_to_a_copy():
  base = config_lib.default_config()
  changed = sweep.apply_overrides(base, {'model.depth': 56, 'learning_rate': 1})
  assert (changed.model.depth, changed.learning_rate, base.model.depth) == (56, 1.0, 20)


# ----------------------------------------------------------------------------- names


def test_point_names_are_short_and_deterministic():
  points = sweep.product(sweep.axis('model.depth', [20]), sweep.axis('model.shortcut', ['A']),
                         sweep.axis('seed', [0]), sweep.axis('learning_rate', [1e-4]))
  runs = sweep.expand(config_lib.default_config(), points, '/w')
  assert runs[0].name == 'depth=20,shortcut=A,seed=0,learning_rate=0.0001'
  assert runs[0].workdir == Path('/w/depth=20,shortcut=A,seed=0,learning_rate=0.0001')


def test_point_names_keep_full_paths_where_last_keys_clash_and_are_filesystem_safe():
  point = {'model.width': 2, 'dataset.width': 3, 'dataset.path': '/data/c 10'}
  assert sweep.point_name(point) == 'model.width=2,dataset.width=3,path=_data_c_10'
  long = sweep.point_name({'dataset.path': 'x' * 300})
  assert len(long) <= 120 and long == sweep.point_name({'dataset.path': 'x' * 300})


def test_config_argument_is_split_from_the_file():
  assert sweep.split_config_argument('experiments/degradation.py:quick,seeds=3') == (
      'experiments/degradation.py', 'quick,seeds=3')
  assert sweep.split_config_argument('configs/wrn.py') == ('configs/wrn.py', None)


# ----------------------------------------------------------------------------- grouping


def test_only_runs_differing_in_seed_lr_wd_momentum_share_a_vmapped_group():
  points = sweep.product(sweep.axis('model.depth', [20, 32]), sweep.axis('seed', [0, 1, 2]),
                         sweep.axis('learning_rate', [0.1, 0.05]))
  runs = sweep.expand(config_lib.default_config(), points, '/w')
  groups = sweep.group_runs(runs, max_group=4)
  assert [len(g) for g in groups] == [4, 2, 4, 2]
  for group in groups:
    assert len({run.config.model.depth for run in group}) == 1
  assert [len(g) for g in sweep.group_runs(runs, max_group=1)] == [1] * 12


@pytest.mark.parametrize('mode, speedup, vmapped', [
    ('off', 9.0, False), ('on', 0.1, True), ('auto', 0.3, False), ('auto', 1.5, True)])
def test_vmap_modes_batch_a_group_only_where_asked_or_measured_faster(
    mode, speedup, vmapped, monkeypatch):
  runs = sweep.expand(config_lib.default_config(), sweep.axis('seed', [0, 1]), '/w')
  calls = []
  monkeypatch.setattr(sweep_batched, 'measure', lambda runs: calls.append('measure') or {
      'speedup': speedup, 'model': 'm', 'separate_img_per_s': 1.0, 'vmapped_img_per_s': speedup})
  monkeypatch.setattr(sweep_batched, 'train_group', lambda runs: calls.append('group') or
                      [{} for _ in runs])
  monkeypatch.setattr(sweep, 'run_single', lambda run, *a: calls.append('single') or {})
  monkeypatch.setattr(sweep, '_measured_speedups', {})
  sweep.run_groups(sweep.group_runs(runs, sweep.VMAP_GROUP_SIZE), vmap=mode)
  assert ('group' in calls) == vmapped and calls.count('single') == (0 if vmapped else 2)
  assert ('measure' in calls) == (mode == 'auto')
  with pytest.raises(SweepError, match='--sweep_vmap'):
    sweep.check_vmap_mode('sometimes')


def test_executor_arguments_parse_to_typed_values():
  assert sweep._parse_executor_args('partition=gpu, timeout_min=720,mem_gb=7.5') == {
      'partition': 'gpu', 'timeout_min': 720, 'mem_gb': 7.5}
  with pytest.raises(SweepError, match='not key=value'):
    sweep._parse_executor_args('partition')


# ----------------------------------------------------------------------------- execution


SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope='module')
def separate_runs(tiny_data, tmp_path_factory):
  """Four seeds trained one by one through the sweep runner (vmap off): the reference."""
  workdir = tmp_path_factory.mktemp('separate')
  spec = write_sweep_file(workdir.parent / 'seeds_spec.py', f"sweep.axis('seed', {SEEDS})")
  rows = sweep.main(tiny_config(tiny_data), str(spec), workdir, vmap='off')
  return workdir, spec, rows


def test_a_sweep_runs_every_point_in_its_own_folder_and_reports(separate_runs):
  workdir, _, rows = separate_runs
  assert [row['name'] for row in rows] == [f'seed={s}' for s in SEEDS]
  for seed in SEEDS:
    results = json.loads((workdir / f'seed={seed}' / 'results.json').read_text())
    assert results['step'] == 4 and 0 <= results['test_error'] <= 1
  with open(workdir / 'runs.csv') as file:
    table = list(csv.DictReader(file))
  assert len(table) == 4
  for column in ('seed', 'params', 'flops_per_example', 'test_error', 'best_test_error',
                 'train_error', 'wall_s', 'img_per_s'):
    assert table[0][column] != '', column
  assert int(table[0]['params']) == 75_290  # ResNet-8 with a 10-class head
  # results.csv: the four seeds pooled into one configuration, reported as the papers do.
  with open(workdir / 'results.csv') as file:
    (pooled,) = list(csv.DictReader(file))
  errors = sorted(float(row['test_error']) for row in table)
  assert float(pooled['test_error_median']) == pytest.approx((errors[1] + errors[2]) / 2)
  assert float(pooled['test_error_min']) == pytest.approx(errors[0])
  assert float(pooled['test_error_mean']) == pytest.approx(np.mean(errors))
  assert float(pooled['test_error_std']) == pytest.approx(np.std(errors, ddof=1))
  assert pooled['finished'] == '4' and 'best_test_error_median' not in pooled
  report = (workdir / 'report.md').read_text()
  assert 'seeds_spec.py' in report and '4/4' in report and ' ± ' in report
  assert 'test error % median' in report and 'best test' not in report
  assert (workdir / 'curves.png').exists()
  assert json.loads((workdir / 'sweep.json').read_text())['points'] == [{'seed': s} for s in SEEDS]


def test_rerunning_a_sweep_skips_finished_points_and_resumes_interrupted_ones(
    separate_runs, tiny_data, tmp_path, monkeypatch):
  """As if the sweep was killed in its last point after a checkpoint: one rerun finishes it."""
  workdir, spec, _ = separate_runs
  workdir = Path(shutil.copytree(workdir, tmp_path / 'sweep'))
  finished = {s: (workdir / f'seed={s}' / 'results.json').stat().st_mtime_ns for s in SEEDS}
  interrupted = workdir / 'seed=3'
  (interrupted / 'results.json').unlink()
  trained = []
  real_train = train.train_and_evaluate
  monkeypatch.setattr(train, 'train_and_evaluate',
                      lambda config, w: trained.append(Path(w).name) or real_train(config, w))
  lines_before = (interrupted / 'metrics.jsonl').read_text().count('train/loss')

  sweep.main(tiny_config(tiny_data), str(spec), workdir, vmap='off')

  assert trained == ['seed=3']
  for seed in SEEDS[:3]:
    assert (workdir / f'seed={seed}' / 'results.json').stat().st_mtime_ns == finished[seed]
  # Resumed from its final checkpoint: evaluated again, no training step redone.
  assert (interrupted / 'metrics.jsonl').read_text().count('train/loss') == lines_before
  assert json.loads((interrupted / 'results.json').read_text())['step'] == 4


def test_a_rerun_with_other_overrides_stops_before_running_and_names_points_and_keys(
    separate_runs, tiny_data, tmp_path, monkeypatch, capsys):
  """Finished points whose config.json is not the point's config now are not finished."""
  workdir, spec, _ = separate_runs
  workdir = Path(shutil.copytree(workdir, tmp_path / 'sweep'))
  report_before = (workdir / 'report.md').read_text()
  monkeypatch.setattr(train, 'train_and_evaluate', pytest.fail)
  changed = tiny_config(tiny_data, num_train_steps=40, **{'model.depth': 14})
  with pytest.raises(SweepError) as error:
    sweep.main(changed, str(spec), workdir, vmap='off')
  message = str(error.value)
  assert message.startswith('4 of 4 points hold runs of another config (seed=0: model.depth 8 '
                            '-> 14, num_train_steps 4 -> 40; seed=1: ')
  assert 'rerun with a fresh --workdir' in message and '\n' not in message
  assert (workdir / 'report.md').read_text() == report_before  # no new command over old numbers

  sweep.main(changed, str(spec), workdir, dry_run=True)
  assert capsys.readouterr().out.count(' stale ') == 4


def test_a_get_sweep_that_raises_is_one_line(tmp_path):
  spec = write_sweep_file(tmp_path / 'spec.py', "{}['seeds']")
  with pytest.raises(SweepError, match=r"spec.py: get_sweep\(None\) raised KeyError: 'seeds'"):
    sweep.main(config_lib.default_config(), str(spec), tmp_path / 'w')


def _metric_lines(run_dir: Path):
  return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def test_a_vmapped_group_of_four_seeds_matches_four_separate_runs(separate_runs, tiny_data,
                                                                 tmp_path):
  """Same files, same keys, same numbers up to float reassociation.

  vmapping turns each convolution into a batched one, so float32 sums are ordered
  differently, and SGD at lr 0.1 carries the rounding forward. Measured after 4 steps:
  losses differ by ~1e-5 relative, gradient norms by ~2e-4, parameters by ~3e-4 absolute
  (1e-4 of their norm). Tolerances: rtol 1e-4 on losses and accuracies, 1e-3 on gradient
  norms, atol 2e-3 on parameters.
  """
  workdir, _, _ = separate_runs
  runs = sweep.expand(tiny_config(tiny_data), sweep.axis('seed', SEEDS), tmp_path / 'group')
  outcomes = sweep_batched.train_group(runs)
  assert [o['vmap_group_size'] for o in outcomes] == [4] * 4

  for seed, run in zip(SEEDS, runs):
    reference = workdir / f'seed={seed}'
    assert sorted(p.name for p in run.workdir.iterdir() if p.name != 'tensorboard') == \
        sorted(p.name for p in reference.iterdir() if p.name != 'tensorboard')
    expected = json.loads((reference / 'results.json').read_text())
    got = json.loads(run.results_file.read_text())
    assert set(got) - {'vmap_group_size'} == set(expected)
    for key in ('test_loss', 'train_loss', 'test_accuracy', 'best_test_accuracy', 'train_error'):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, err_msg=key)
    lines, expected_lines = _metric_lines(run.workdir), _metric_lines(reference)
    assert [sorted(l) for l in lines] == [sorted(l) for l in expected_lines]
    for line, expected_line in zip(lines, expected_lines):
      for key, rtol in (('train/loss', 1e-4), ('train/lr', 1e-6), ('eval/loss', 1e-4),
                        ('train/grad_norm', 1e-3)):
        if key in line:
          np.testing.assert_allclose(line[key], expected_line[key], rtol=rtol, err_msg=key)
    np.testing.assert_allclose(*[_final_params(d) for d in (run.workdir, reference)], atol=2e-3)


def _final_params(workdir):
  import orbax.checkpoint as ocp
  directory = Path(workdir) / 'checkpoints'
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(directory / str(step) / 'state')
  return np.concatenate([np.ravel(x) for x in jax_leaves(state['params'])])


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_a_group_resumes_together_from_equal_steps_and_one_by_one_otherwise(
    tiny_data, tmp_path, monkeypatch, capsys):
  runs = sweep.expand(tiny_config(tiny_data), sweep.axis('seed', SEEDS), tmp_path / 'g')
  sweep_batched.train_group(runs)
  for run in runs:  # as if killed between the checkpoints of steps 2 and 4
    run.results_file.unlink()
    shutil.rmtree(run.workdir / 'checkpoints' / '4')
  alone = []
  monkeypatch.setattr(sweep, 'run_single', lambda run, *a: alone.append(run.name))
  outcomes = sweep_batched.train_group(runs)
  assert alone == [] and [o['step'] for o in outcomes] == [4] * 4
  assert 'resuming the group from step 2' in capsys.readouterr().out

  runs[1].results_file.unlink()
  shutil.rmtree(runs[0].workdir)  # one run starts over, the others are at step 4
  sweep_batched.train_group(runs)
  assert alone == ['seed=0', 'seed=1', 'seed=2', 'seed=3']


def test_submitit_local_executor_runs_points_as_jobs(tiny_data, tmp_path):
  spec = write_sweep_file(tmp_path / 'spec.py', "sweep.axis('seed', [0])")
  rows = sweep.main(tiny_config(tiny_data), str(spec), tmp_path / 'w',
                    executor='submitit_local', executor_args='timeout_min=10')
  assert [row['status'] for row in rows] == ['done']
  assert len(list((tmp_path / 'w' / 'submitit').glob('*_result.pkl'))) == 1
  assert (tmp_path / 'w' / 'results.csv').exists()


class FakeLocalExecutor:
  """Stands in for submitit.LocalExecutor: records each job's GPUs and which jobs overlap."""
  log: list = []

  def __init__(self, folder):
    self.parameters = {}

  def update_parameters(self, **parameters):
    self.parameters.update(parameters)

  def submit(self, function, groups, *args):
    executor = self

    class Job:
      job_id = str(len(FakeLocalExecutor.log))
      polls = 0

      def done(self):
        self.polls += 1
        return self.polls > 1  # each job stays running for one poll

      def result(self):
        return True

    FakeLocalExecutor.log.append((groups[0][0].name, tuple(executor.parameters['visible_gpus'])))
    return Job()


def test_submitit_local_runs_one_point_per_gpu_at_a_time(monkeypatch, tmp_path):
  import submitit
  monkeypatch.setattr(submitit, 'LocalExecutor', FakeLocalExecutor)
  monkeypatch.setattr(sweep, '_local_gpu_count', lambda: 2)
  FakeLocalExecutor.log = []
  runs = sweep.expand(config_lib.default_config(), sweep.axis('seed', [0, 1, 2, 3, 4]), tmp_path)
  failures = sweep.submit_jobs([[run] for run in runs], tmp_path, 'submitit_local', '', None,
                               poll_s=0)
  assert failures == []
  assert [gpus for _, gpus in FakeLocalExecutor.log] == [(0,), (1,), (0,), (1,), (0,)]
  assert [name for name, _ in FakeLocalExecutor.log] == [f'seed={s}' for s in range(5)]


def test_the_dry_run_lists_points_without_running_them(separate_runs, tiny_data, capsys,
                                                       monkeypatch):
  workdir, spec, _ = separate_runs
  monkeypatch.setattr(train, 'train_and_evaluate', pytest.fail)
  sweep.main(tiny_config(tiny_data), str(spec), workdir, dry_run=True, vmap='auto')
  listing = capsys.readouterr().out
  assert 'seed=0' in listing and 'resnet8-A' in listing and '4 points in 1 group(s)' in listing
  assert listing.count(' done ') == 4
