"""resnet_jax/sweeps/vmapped.py: which runs share a program, and a vmapped group's files
and numbers against the same runs trained one by one."""

import json
import shutil
from pathlib import Path

import numpy as np

from resnet_jax import schema, sweeps
from resnet_jax.sweeps import spec, vmapped
from tiny_sweeps import SEEDS, tiny_config


def test_only_runs_differing_in_seed_lr_wd_momentum_share_a_vmapped_group():
  points = sweeps.product(sweeps.axis('model.depth', [20, 32]), sweeps.axis('seed', [0, 1, 2]),
                         sweeps.axis('learning_rate', [0.1, 0.05]))
  runs = spec.expand(schema.default_config(), points, '/w')
  groups = vmapped.group_runs(runs, max_group=4)
  assert [len(g) for g in groups] == [4, 2, 4, 2]
  for group in groups:
    assert len({run.config.model.depth for run in group}) == 1
  assert [len(g) for g in vmapped.group_runs(runs, max_group=1)] == [1] * 12


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
  runs = spec.expand(tiny_config(tiny_data), sweeps.axis('seed', SEEDS), tmp_path / 'group')
  outcomes = vmapped.train_group(runs)
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
  runs = spec.expand(tiny_config(tiny_data), sweeps.axis('seed', SEEDS), tmp_path / 'g')
  vmapped.train_group(runs)
  for run in runs:  # as if killed between the checkpoints of steps 2 and 4
    run.results_file.unlink()
    shutil.rmtree(run.workdir / 'checkpoints' / '4')
  alone = []
  monkeypatch.setattr(spec.Run, 'train', lambda run, *a: alone.append(run.name))
  outcomes = vmapped.train_group(runs)
  assert alone == [] and [o['step'] for o in outcomes] == [4] * 4
  assert 'resuming the group from step 2' in capsys.readouterr().out

  runs[1].results_file.unlink()
  shutil.rmtree(runs[0].workdir)  # one run starts over, the others are at step 4
  vmapped.train_group(runs)
  assert alone == ['seed=0', 'seed=1', 'seed=2', 'seed=3']
