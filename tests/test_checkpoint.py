"""Checkpointer: round trip, retention, damaged checkpoints, other device counts.

The cross-device and multi-process cases run this file as a script in fresh
processes (see `_worker` at the bottom): the number of simulated devices must
be fixed before JAX starts, and each process of a multi-process job needs its
own interpreter.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # When run as a worker script.
  sys.path.insert(0, str(REPO_ROOT))

from resnet_jax.checkpoint import Checkpointer, WorkdirLock  # pylint: disable=g-import-not-at-top
from resnet_jax.errors import WorkdirError, WorkdirInUse  # pylint: disable=g-import-not-at-top

LOGGER = 'resnet_jax.checkpoint'
WIDTH = 4096

# After one failed array read, orbax abandons its other pending reads; when
# garbage-collected they report "Exception ignored in: <coroutine
# _read_array_index_and_device_put>" or a closed event loop. Harmless.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Exception ignored in. (None|<coroutine object _read_array_index)'
    ':pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(autouse=True)
def _collect_abandoned_reads():
  """Reports those leftovers in the test that caused them, where they are ignored."""
  yield
  gc.collect()


# ------------------------------------------------------------------ fixtures


@struct.dataclass
class TrainState:
  """Shaped like the engine's train state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Key data (uint32), not a typed key.


def make_optimizer():
  return optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)


def host_state(step: int) -> TrainState:
  """A deterministic numpy state for `step`: any process can rebuild it."""
  params = {
      'dense': {
          # Large enough that its data file is the checkpoint's largest file.
          'kernel': np.arange(8 * WIDTH, dtype=np.float32).reshape(8, WIDTH) / 7
                    + step,
          'bias': np.full((WIDTH,), step, np.float32),
      }
  }
  tx = make_optimizer()
  opt_state = tx.init(params)
  # One update so the momentum trace and count are not just zeros.
  _, opt_state = tx.update(params, opt_state, params)
  opt_state.hyperparams['learning_rate'] = np.float32(0.1 / (1 + step))
  return jax.device_get(TrainState(
      step=np.int32(step),
      params=params,
      batch_stats={'bn': {'mean': np.full((WIDTH,), 0.5 * step, np.float32),
                          'var': np.ones((WIDTH,), np.float32)}},
      opt_state=opt_state,
      rng=np.asarray(jax.random.key_data(jax.random.key(step))),
  ))


def sharding_for(x, mesh) -> NamedSharding:
  """2-D arrays (kernels, their momentum) split by rows; the rest replicated."""
  return NamedSharding(mesh, P('data') if np.ndim(x) == 2 else P())


def device_state(step: int, mesh) -> TrainState:
  """`host_state(step)` laid out on `mesh` (works across processes too)."""
  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(
        x.shape, sharding_for(x, mesh), lambda index: x[index])
  return jax.tree.map(place, host_state(step))


def abstract_state(mesh) -> TrainState:
  """What the engine passes to restore: shapes, dtypes and target shardings."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          np.shape(x), np.asarray(x).dtype, sharding=sharding_for(x, mesh)),
      host_state(0))


def local_mesh():
  return jax.make_mesh(
      (jax.device_count(),), ('data',),
      axis_types=(jax.sharding.AxisType.Auto,))


def assert_state_equal(restored, expected_host: TrainState) -> None:
  restored_leaves, restored_tree = jax.tree.flatten(restored)
  expected_leaves, expected_tree = jax.tree.flatten(expected_host)
  assert restored_tree == expected_tree
  for got, want in zip(restored_leaves, expected_leaves):
    assert got.dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(np.asarray(got), want)


def save_steps(directory, steps, *, accuracies=None, **kwargs):
  mesh = local_mesh()
  with Checkpointer(directory, **kwargs) as ckpt:
    for i, step in enumerate(steps):
      metrics = None
      if accuracies is not None and accuracies[i] is not None:
        metrics = {'eval/accuracy': accuracies[i]}
      assert ckpt.save(step, device_state(step, mesh), metrics=metrics)


def checkpointer_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name == LOGGER and r.levelno == logging.WARNING]


# ---------------------------------------------------------------- round trip


def test_save_then_restore_returns_the_same_state(tmp_path):
  save_steps(tmp_path, [10], accuracies=[0.5], best_metric='eval/accuracy')

  mesh = local_mesh()
  with Checkpointer(tmp_path, best_metric='eval/accuracy') as ckpt:
    assert ckpt.latest_step == 10 and ckpt.all_steps() == [10]
    step, state = ckpt.restore_latest(abstract_state(mesh))

  assert step == 10
  assert_state_equal(state, host_state(10))
  # The optax inject_hyperparams state comes back with its types and values.
  assert isinstance(state.opt_state, optax.InjectStatefulHyperparamsState)
  np.testing.assert_allclose(state.opt_state.hyperparams['learning_rate'], 0.1 / 11)
  # Every array lands where the abstract state asked.
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract_state(mesh))):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)


def test_restore_latest_without_checkpoints_returns_none(tmp_path, caplog):
  with Checkpointer(tmp_path / 'empty') as ckpt:
    assert ckpt.restore_latest(abstract_state(local_mesh())) is None
    assert ckpt.latest_step is None and ckpt.best_step is None
  assert not checkpointer_warnings(caplog)


def test_typed_prng_keys_round_trip(tmp_path):
  """Orbax 0.12 stores typed keys itself; key_data is not required."""
  state = {'key': jax.random.key(3)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  with Checkpointer(tmp_path) as ckpt:
    _, restored = ckpt.restore_latest(jax.tree.map(
        lambda k: jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=k.sharding), state))
  assert jax.dtypes.issubdtype(restored['key'].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(
      jax.random.key_data(restored['key']), jax.random.key_data(state['key']))


def test_async_save_returns_before_writing_and_close_completes_it(tmp_path):
  mesh = local_mesh()
  ckpt = Checkpointer(tmp_path, async_save=True)
  assert ckpt.save(7, device_state(7, mesh))
  assert ckpt.latest_step == 7  # Tracked at once, even while still writing.
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ['7']  # Committed: no tmp dir left.

  with Checkpointer(tmp_path) as reopened:
    step, state = reopened.restore_latest(abstract_state(mesh))
  assert step == 7
  assert_state_equal(state, host_state(7))


def test_saving_an_existing_step_again_is_a_no_op(tmp_path):
  """The final (force=True) save may land on a step just saved periodically."""
  mesh = local_mesh()
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, device_state(5, mesh))
    assert not ckpt.save(5, device_state(6, mesh), force=True)
    assert ckpt.save(6, device_state(6, mesh), force=True)
    assert ckpt.all_steps() == [5, 6]


# ----------------------------------------------------------------- retention


@pytest.mark.parametrize('best_mode, scores', [
    ('max', [0.1, 0.9, 0.2, None, 0.3]),
    ('min', [0.9, 0.1, 0.8, None, 0.7]),
])
def test_retention_keeps_the_newest_n_and_the_best(tmp_path, best_mode, scores):
  # Step 2 has the best score; step 4 was saved without metrics.
  save_steps(tmp_path, [1, 2, 3, 4, 5], accuracies=scores, max_to_keep=2,
             best_metric='eval/accuracy', best_mode=best_mode)

  assert sorted(os.listdir(tmp_path), key=int) == ['2', '4', '5']
  with Checkpointer(tmp_path, max_to_keep=2, best_metric='eval/accuracy',
                    best_mode=best_mode) as ckpt:
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step == 2
    assert ckpt.latest_step == 5


def test_without_best_metric_only_the_newest_are_kept(tmp_path):
  save_steps(tmp_path, [1, 2, 3, 4], accuracies=[0.9, 0.1, 0.1, 0.1], max_to_keep=2)
  assert sorted(os.listdir(tmp_path), key=int) == ['3', '4']


def test_nan_metric_never_counts_as_best(tmp_path):
  save_steps(tmp_path, [1, 2, 3], accuracies=[0.2, float('nan'), np.float32(0.1)],
             max_to_keep=1, best_metric='eval/accuracy')
  assert sorted(os.listdir(tmp_path), key=int) == ['1', '3']


def test_best_step_needs_a_real_value_of_the_metric(tmp_path):
  save_steps(tmp_path, [1], accuracies=[float('nan')], best_metric='eval/accuracy')
  with Checkpointer(tmp_path, best_metric='eval/accuracy') as ckpt:
    assert ckpt.best_step is None
  with Checkpointer(tmp_path, best_metric='eval/loss', best_mode='min') as ckpt:
    assert ckpt.best_step is None  # Saved with other metrics only.


def test_the_step_marked_good_outlives_retention_restarts_and_a_divergence(tmp_path):
  """keep 1: steps 1 and 3 remain; moving aside what follows step 1 leaves it to resume."""
  mesh = local_mesh()
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(1, device_state(1, mesh))
    ckpt.mark_good(1)  # training went on from step 1 with every value finite
    ckpt.save(2, device_state(2, mesh))
    ckpt.save(3, device_state(3, mesh))
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    assert ckpt.all_steps() == [1, 3] and ckpt.last_good_step == 1
    assert ckpt.move_aside_after(ckpt.last_good_step, 'diverged') == [3]
    assert ckpt.restore_latest(abstract_state(mesh))[0] == 1
  assert [p.name.split('-')[0] for p in tmp_path.glob('3.*')] == ['3.diverged']


def test_a_save_the_disk_cannot_hold_is_refused_in_one_line_before_orbax_starts(
    tmp_path, monkeypatch):
  save_steps(tmp_path, [1])
  free = shutil.disk_usage(tmp_path)._replace(free=1000)
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: free)
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(WorkdirError) as error:
      ckpt.save(2, device_state(2, local_mesh()))
  assert str(error.value).startswith(f'no space left on device for checkpoint step 2 in '
                                     f'{tmp_path}: it needs about ')
  assert 'a rerun resumes from checkpoint step 1' in str(error.value)
  assert os.listdir(tmp_path) == ['1']


# -------------------------------------------------------- damaged checkpoints


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
  with open(path, 'r+b') as f:
    f.truncate(path.stat().st_size // 2)


DAMAGE = {
    # The array data file of the largest array: half of it missing.
    'truncated array data': lambda d: _truncate(_largest_file(d / 'state')),
    'deleted array data': lambda d: _largest_file(d / 'state').unlink(),
    'deleted OCDBT manifest': lambda d: (d / 'state' / 'manifest.ocdbt').unlink(),
    'truncated tree metadata': lambda d: _truncate(d / 'state' / '_METADATA'),
    # Orbax parses this one while starting up: without care it would crash.
    'truncated metrics file': lambda d: _truncate(d / 'metrics' / 'metrics'),
    'deleted state item': lambda d: shutil.rmtree(d / 'state'),
    'emptied step directory': lambda d: [
        shutil.rmtree(p) if p.is_dir() else p.unlink() for p in list(d.iterdir())],
}


@pytest.mark.parametrize('damage', DAMAGE)
def test_damaged_latest_is_moved_aside_and_the_previous_restored(
    tmp_path, caplog, damage):
  save_steps(tmp_path, [1, 2, 3], accuracies=[0.1, 0.2, 0.3],
             best_metric='eval/accuracy')
  DAMAGE[damage](tmp_path / '3')

  with caplog.at_level(logging.WARNING, logger=LOGGER):
    with Checkpointer(tmp_path, best_metric='eval/accuracy') as ckpt:
      step, state = ckpt.restore_latest(abstract_state(local_mesh()))
      assert ckpt.all_steps() == [1, 2]

  assert step == 2
  assert_state_equal(state, host_state(2))
  # One warning line that names the step and the reason.
  (warning,) = checkpointer_warnings(caplog)
  assert 'step 3 is unreadable (' in warning and '\n' not in warning
  # Kept for inspection under a name orbax does not treat as a step.
  (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith('3.corrupt-')]
  assert moved.name in warning
  assert sorted(p.name for p in tmp_path.iterdir()) == ['1', '2', moved.name]


def test_interrupted_save_is_reported_and_skipped(tmp_path, caplog):
  save_steps(tmp_path, [1, 2])
  # What a save killed half-way leaves: orbax's uncommitted tmp directory.
  partial = tmp_path / '3.orbax-checkpoint-tmp-1730000000000000'
  shutil.copytree(tmp_path / '2', partial)
  _truncate(_largest_file(partial / 'state'))

  with caplog.at_level(logging.WARNING, logger=LOGGER):
    with Checkpointer(tmp_path) as ckpt:
      step, _ = ckpt.restore_latest(abstract_state(local_mesh()))

  assert step == 2
  (warning,) = checkpointer_warnings(caplog)
  assert partial.name in warning and 'never committed' in warning


def test_all_checkpoints_damaged_returns_none_with_a_warning(tmp_path, caplog):
  save_steps(tmp_path, [1, 2])
  for step in ('1', '2'):
    _truncate(_largest_file(tmp_path / step / 'state'))

  with caplog.at_level(logging.WARNING, logger=LOGGER):
    with Checkpointer(tmp_path) as ckpt:
      assert ckpt.restore_latest(abstract_state(local_mesh())) is None
      assert ckpt.latest_step is None

  warnings = checkpointer_warnings(caplog)
  assert len(warnings) == 3
  assert 'step 2 is unreadable' in warnings[0]
  assert 'step 1 is unreadable' in warnings[1]
  assert 'No readable checkpoint' in warnings[2]
  assert len([p for p in tmp_path.iterdir() if '.corrupt-' in p.name]) == 2


def test_checkpoint_of_a_different_model_is_an_error_not_damage(tmp_path):
  save_steps(tmp_path, [1])
  other = abstract_state(local_mesh()).replace(
      batch_stats={'bn': {'mean': jax.ShapeDtypeStruct((32,), jnp.float32)}})

  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match=r'holds a different state.*batch_stats'):
      ckpt.restore_latest(other)
  assert os.listdir(tmp_path) == ['1']  # Untouched.


# ------------------------------------------------------------------ the lock


def write_lock(workdir, **holder):
  lock = workdir / WorkdirLock.FILE
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                              'started': 0.0, 'token': 'other', **holder}))
  return lock


def test_a_live_holder_is_named_and_a_released_lock_is_gone(tmp_path):
  with WorkdirLock(tmp_path):
    holder = json.loads((tmp_path / 'lock.json').read_text())
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
    with pytest.raises(WorkdirInUse) as error:
      WorkdirLock(tmp_path).acquire()
  assert f'in use by pid {os.getpid()} on host {socket.gethostname()}' in str(error.value)
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'lock.json').exists()


def test_the_lock_of_a_dead_process_on_this_host_does_not_block(tmp_path):
  finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                            capture_output=True, text=True, check=True)
  write_lock(tmp_path, pid=int(finished.stdout))
  with WorkdirLock(tmp_path) as lock:
    assert lock.taken_over['pid'] == int(finished.stdout)


@pytest.mark.parametrize('heartbeat_age_s, taken', [(5, False), (3600, True)])
def test_another_hosts_lock_is_stale_only_once_its_heartbeat_is_old(
    tmp_path, heartbeat_age_s, taken):
  lock = write_lock(tmp_path, host='another-host', pid=1)
  os.utime(lock, (time.time() - heartbeat_age_s,) * 2)
  if taken:
    with WorkdirLock(tmp_path, stale_after_s=300) as ours:
      assert ours.taken_over['host'] == 'another-host'
  else:
    with pytest.raises(WorkdirInUse, match='in use by pid 1 on host another-host'):
      WorkdirLock(tmp_path, stale_after_s=300).acquire()


# -------------------------------------------- other device and process counts


def _run_workers(tmp_path, *, role, devices, processes=1, timeout=120):
  """Runs this file as `processes` worker processes; returns their outputs."""
  port = _free_port()
  env = dict(os.environ,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  workers = [
      subprocess.Popen(
          [sys.executable, __file__, role, str(tmp_path), str(i),
           str(processes), str(port)],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)
  ]
  outputs = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, stderr[-3000:]
    outputs.append((stdout, stderr))
  return outputs


def _result(stdout: str) -> dict:
  (line,) = [l for l in stdout.splitlines() if l.startswith('RESULT ')]
  return json.loads(line[len('RESULT '):])


@pytest.mark.parametrize('save_devices, restore_devices', [(8, 1), (1, 8)])
def test_restores_on_a_different_number_of_devices(
    tmp_path, save_devices, restore_devices):
  [(saved, _)] = _run_workers(tmp_path, role='save', devices=save_devices)
  [(restored, _)] = _run_workers(tmp_path, role='restore', devices=restore_devices)

  assert _result(saved) == {'devices': save_devices, 'processes': 1}
  assert _result(restored) == {'step': 3, 'devices': restore_devices,
                               'processes': 1, 'matches': True,
                               'shardings_match': True}


def test_multi_process_restore_agrees_and_moves_aside_once(tmp_path):
  """2 processes x 2 devices; the newest checkpoint is damaged."""
  saved = _run_workers(tmp_path, role='save', devices=2, processes=2)
  assert [_result(stdout) for stdout, _ in saved] == [
      {'devices': 4, 'processes': 2}] * 2
  _truncate(_largest_file(tmp_path / '3' / 'state'))

  outputs = _run_workers(tmp_path, role='restore', devices=2, processes=2)

  assert [_result(stdout) for stdout, _ in outputs] == [
      {'step': 2, 'devices': 4, 'processes': 2, 'matches': True,
       'shardings_match': True}] * 2
  warnings = [l for _, stderr in outputs for l in stderr.splitlines()
              if 'is unreadable' in l]
  assert len(warnings) == 1  # Only process 0 renames and reports.
  assert len([p for p in tmp_path.iterdir() if '.corrupt-' in p.name]) == 1


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _worker(role: str, directory: str, process_id: int, num_processes: int,
            port: int) -> None:
  """Saves steps 1-3, or restores the latest and checks it, on all devices."""
  logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')
  if num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=num_processes,
                               process_id=process_id)
  mesh = local_mesh()
  with Checkpointer(directory, max_to_keep=3, best_metric='eval/accuracy') as ckpt:
    if role == 'save':
      for step in (1, 2, 3):
        ckpt.save(step, device_state(step, mesh), metrics={'eval/accuracy': step})
      print('RESULT ' + json.dumps({'devices': jax.device_count(),
                                    'processes': jax.process_count()}))
      return
    abstract = abstract_state(mesh)
    step, state = ckpt.restore_latest(abstract)
  expected = device_state(step, mesh)
  matches = all(
      bool(jnp.array_equal(got, want))  # Compares across processes as well.
      for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)))
  shardings_match = all(
      got.sharding.is_equivalent_to(want.sharding, got.ndim)
      for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)))
  print('RESULT ' + json.dumps({
      'step': step, 'devices': jax.device_count(),
      'processes': jax.process_count(), 'matches': matches,
      'shardings_match': shardings_match}), flush=True)


if __name__ == '__main__':
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
          int(sys.argv[5]))
