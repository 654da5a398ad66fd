"""resnet_jax/sweeps/execute.py: running a sweep, skipping and resuming points, stale
records, vmap modes, submitit executors, the dry run and the report."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resnet_jax import schema, sweeps, train
from resnet_jax.errors import SweepError
from resnet_jax.sweeps import execute, spec, vmapped
from tiny_sweeps import SEEDS, tiny_config, write_sweep_file

ROOT = Path(__file__).resolve().parents[2]


def test_bad_spec_stops_the_sweep_before_any_training(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', pytest.fail)
  spec = write_sweep_file(tmp_path / 'spec.py',
                          "sweeps.axis('model.depth', [20, 21])")
  with pytest.raises(SweepError, match='depth=21'):
    execute.main(schema.default_config(), str(spec), tmp_path / 'w')
  assert not (tmp_path / 'w').exists()


def test_a_config_file_without_get_sweep_is_a_clear_error(tmp_path):
  with pytest.raises(SweepError, match='has no get_sweep'):
    execute.main(schema.default_config(), str(ROOT / 'configs/resnet_cifar.py'), tmp_path)


@pytest.mark.parametrize('mode, speedup, together', [
    ('off', 9.0, False), ('on', 0.1, True), ('auto', 0.3, False), ('auto', 1.5, True)])
def test_vmap_modes_batch_a_group_only_where_asked_or_measured_faster(
    mode, speedup, together, monkeypatch):
  runs = spec.expand(schema.default_config(), sweeps.axis('seed', [0, 1]), '/w')
  calls = []
  monkeypatch.setattr(vmapped, 'measure', lambda runs: calls.append('measure') or {
      'speedup': speedup, 'model': 'm', 'separate_img_per_s': 1.0, 'vmapped_img_per_s': speedup})
  monkeypatch.setattr(vmapped, 'train_group', lambda runs: calls.append('group') or
                      [{} for _ in runs])
  monkeypatch.setattr(spec.Run, 'train', lambda run, *a: calls.append('single') or {})
  monkeypatch.setattr(execute, '_measured_speedups', {})
  execute.run_groups(vmapped.group_runs(runs, execute.VMAP_GROUP_SIZE), vmap=mode)
  assert ('group' in calls) == together and calls.count('single') == (0 if together else 2)
  assert ('measure' in calls) == (mode == 'auto')
  with pytest.raises(SweepError, match='--sweep_vmap'):
    execute.check_vmap_mode('sometimes')


def test_executor_arguments_parse_to_typed_values():
  assert execute._parse_executor_args('partition=gpu, timeout_min=720,mem_gb=7.5') == {
      'partition': 'gpu', 'timeout_min': 720, 'mem_gb': 7.5}
  with pytest.raises(SweepError, match='not key=value'):
    execute._parse_executor_args('partition')


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

  execute.main(tiny_config(tiny_data), str(spec), workdir, vmap='off')

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
    execute.main(changed, str(spec), workdir, vmap='off')
  message = str(error.value)
  assert message.startswith('4 of 4 points hold runs of another config (seed=0: model.depth 8 '
                            '-> 14, num_train_steps 4 -> 40; seed=1: ')
  assert 'rerun with a fresh --workdir' in message and '\n' not in message
  assert (workdir / 'report.md').read_text() == report_before  # no new command over old numbers

  execute.main(changed, str(spec), workdir, dry_run=True)
  assert capsys.readouterr().out.count(' stale ') == 4


def test_a_get_sweep_that_raises_is_one_line(tmp_path):
  spec = write_sweep_file(tmp_path / 'spec.py', "{}['seeds']")
  with pytest.raises(SweepError, match=r"spec.py: get_sweep\(None\) raised KeyError: 'seeds'"):
    execute.main(schema.default_config(), str(spec), tmp_path / 'w')


def test_submitit_local_executor_runs_points_as_jobs(tiny_data, tmp_path):
  spec = write_sweep_file(tmp_path / 'spec.py', "sweeps.axis('seed', [0])")
  rows = execute.main(tiny_config(tiny_data), str(spec), tmp_path / 'w',
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
  monkeypatch.setattr(execute, '_local_gpu_count', lambda: 2)
  FakeLocalExecutor.log = []
  runs = spec.expand(schema.default_config(), sweeps.axis('seed', [0, 1, 2, 3, 4]), tmp_path)
  failures = execute.submit_jobs([[run] for run in runs], tmp_path, 'submitit_local', '', None,
                               poll_s=0)
  assert failures == []
  assert [gpus for _, gpus in FakeLocalExecutor.log] == [(0,), (1,), (0,), (1,), (0,)]
  assert [name for name, _ in FakeLocalExecutor.log] == [f'seed={s}' for s in range(5)]


def test_the_dry_run_lists_points_without_running_them(separate_runs, tiny_data, capsys,
                                                       monkeypatch):
  workdir, spec, _ = separate_runs
  monkeypatch.setattr(train, 'train_and_evaluate', pytest.fail)
  execute.main(tiny_config(tiny_data), str(spec), workdir, dry_run=True, vmap='auto')
  listing = capsys.readouterr().out
  assert 'seed=0' in listing and 'resnet8-A' in listing and '4 points in 1 group(s)' in listing
  assert listing.count(' done ') == 4
