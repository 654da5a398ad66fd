"""Checkpoints: orbax's CheckpointManager, plus recovery from a damaged checkpoint.

Orbax does the real work: asynchronous writes, atomic commits (a step directory
appears under its final name only once complete), multi-process coordination,
and retention: the newest ``max_to_keep`` checkpoints *and* the best one by
``best_metric`` are kept, which is orbax's ``LatestN`` and ``BestN``
preservation policies joined by ``AnyPreservationPolicy``.

What this module adds:

* ``restore_latest`` survives damage: if the newest checkpoint cannot be read
  (files deleted or truncated), it is renamed to ``<step>.corrupt-<time>``
  (nothing is deleted, and orbax no longer sees it as a step) and the
  next-newest one is tried, on all processes alike;
* a clear error when a checkpoint is intact but holds a different model than
  the one being restored (changed config, same workdir). That is a user error,
  not damage, so those checkpoints are left alone;
* a last good checkpoint that retention never deletes: the caller marks a step
  good (``mark_good``) once training went on from it to the next save with
  everything finite, and ``move_aside_after`` sets the steps after it aside
  (``<step>.diverged-<time>``) when a run diverges, so a rerun resumes from it;
* ``WorkdirLock``: one training process per workdir.

Layout of one step, as written by orbax::

    <directory>/<step>/state/...            the train state (StandardSave)
    <directory>/<step>/metrics/metrics      metrics JSON, when best_metric is set
    <directory>/<step>/_CHECKPOINT_METADATA orbax's step metadata; its
                                            custom_metadata holds {'metrics': ...}
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pathlib
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from resnet_jax.errors import CheckpointMismatch, WorkdirError, WorkdirInUse
from resnet_jax.metrics import to_json_scalar

log = logging.getLogger(__name__)

STATE_ITEM = 'state'
# Where orbax keeps the metrics of a step (`orbax.checkpoint.checkpoint_manager`);
# it parses this file while constructing the manager, so a damaged one must be
# moved aside first.
_METRICS_ITEM = 'metrics'
# Orbax writes `<step>.orbax-checkpoint-tmp-<n>` and renames it when complete.
_TMP_MARKER = '.orbax-checkpoint-tmp'
# Room left beyond a checkpoint's arrays for orbax's metadata files.
_SPACE_MARGIN_BYTES = 2**20
# The step that `mark_good` vouched for last, kept across restarts.
LAST_GOOD_FILE = 'last_good.json'


class Checkpointer:
  """Saves and restores a train state pytree under ``directory``.

  Call every method on every process: orbax synchronises the processes itself,
  and the few filesystem changes made here happen on process 0 only.

  Args:
    directory: root folder for the step directories; created if missing.
    max_to_keep: how many of the newest checkpoints to keep.
    best_metric: key in ``save(metrics=...)`` that ranks checkpoints; the best
      one is kept in addition to the newest ``max_to_keep``. None: newest only.
    best_mode: 'max' or 'min': which direction of ``best_metric`` is better.
    async_save: write in a background thread, so ``save`` returns once the
      arrays are copied off the accelerator.
  """

  def __init__(
      self,
      directory: os.PathLike | str,
      *,
      max_to_keep: int = 3,
      best_metric: str | None = None,
      best_mode: str = 'max',
      async_save: bool = True,
  ):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}')
    self.directory = epath.Path(directory).absolute()
    self.best_metric = best_metric
    self.best_mode = best_mode

    self.directory.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      self._report_uncommitted_saves()
      self._move_aside_steps_with_unreadable_metrics()
    _sync_processes('resnet_jax.checkpoint.init')

    self._last_good = _KeepStep(self._read_last_good())
    policies = [checkpoint_managers.LatestN(n=max_to_keep), self._last_good]
    self._score = best_fn = None
    if best_metric is not None:
      self._score = best_fn = _MetricScore(best_metric, best_mode)
      policies.append(
          checkpoint_managers.BestN(
              get_metric_fn=best_fn,
              reverse=(best_mode == 'min'),
              n=1,
              # A checkpoint saved without metrics is kept only while it is
              # among the newest `max_to_keep` (the LatestN rule).
              keep_checkpoints_without_metrics=False,
          )
      )
    options = ocp.CheckpointManagerOptions(
        # best_fn makes orbax record the metrics of each step and answer
        # best_step(); retention itself is decided by preservation_policy.
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        # An interrupted save leaves an uncommitted tmp directory that can
        # never be restored; orbax removes it (reported above).
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        # Registered up front so that metadata() can read a step before the
        # first save or restore of this run.
        handler_registry=ocp.handlers.create_default_handler_registry(
            **{STATE_ITEM: ocp.StandardCheckpointHandler()}
        ),
    )
    # Reads the state item without orbax's restore barrier; see restore_latest.
    self._state_reader = ocp.StandardCheckpointHandler()
    self._closed = False

  # ---------------------------------------------------------------- queries

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  @property
  def best_step(self) -> int | None:
    """Step with the best ``best_metric``; None if no checkpoint has a value."""
    if self.best_metric is None:
      return None
    step = self._manager.best_step()
    # Orbax ranks every checkpoint saved with metrics, even if this metric is
    # missing or NaN there; such a checkpoint is nobody's "best".
    if step is None or math.isinf(self._score(self._manager.metrics(step))):
      return None
    return step

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  @property
  def last_good_step(self) -> int | None:
    """The newest step marked good that still exists; retention keeps it."""
    step = self._last_good.step
    return step if step is not None and step in self._manager.all_steps() else None

  # ---------------------------------------------------------- last good step

  def mark_good(self, step: int) -> None:
    """Vouches for checkpoint ``step``: training went on from it with everything finite.

    Call it before the next ``save``, so that retention, which runs after that save,
    already keeps ``step``; the mark survives restarts (``last_good.json``).
    """
    step = int(step)
    if step == self._last_good.step:
      return
    self._last_good.step = step
    if jax.process_index() == 0:
      path = self.directory / LAST_GOOD_FILE
      tmp = self.directory / f'{LAST_GOOD_FILE}.tmp'
      tmp.write_text(json.dumps({'step': step}) + '\n')
      os.replace(tmp, path)

  def move_aside_after(self, step: int | None, reason: str) -> list[int]:
    """Renames every step after ``step`` (all, for None) to ``<step>.<reason>-<time>``.

    Nothing is deleted; orbax no longer sees those steps, so the next start resumes
    from ``step``. Returns the steps moved.
    """
    self.wait()
    moved = [s for s in self.all_steps() if step is None or s > step]
    if jax.process_index() == 0:
      for s in moved:
        self._rename_aside(self.directory / str(s), reason)
    _sync_processes(f'resnet_jax.checkpoint.{reason}.{step}')
    self._manager.reload()
    return moved

  def _read_last_good(self) -> int | None:
    try:
      return int(json.loads((self.directory / LAST_GOOD_FILE).read_text())['step'])
    except (OSError, ValueError, KeyError, TypeError):
      return None

  # ------------------------------------------------------------------- save

  def save(
      self,
      step: int,
      state: Any,
      *,
      metrics: Mapping[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Starts writing ``state`` as checkpoint ``step``; returns if it did.

    Returns as soon as the arrays are copied to host memory (async mode); the
    previous save, if still running, is waited for first. ``metrics`` (scalars;
    NaN/Inf are stored as null) rank the checkpoint for ``best_metric`` and are
    stored with it. ``force=True`` is for the final or preemption save: it
    bypasses orbax's should-save decision. A step that already exists is not
    written again (returns False), so a final save right after a periodic one
    at the same step is harmless.
    """
    step = int(step)
    if step in self._manager.all_steps():
      log.info('Checkpoint for step %d already exists; not saving again.', step)
      return False
    self._check_space(step, state)
    metrics = _json_metrics(metrics)
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
        metrics=metrics,
        force=force,
        custom_metadata={'metrics': metrics},
    )

  def _check_space(self, step: int, state: Any) -> None:
    """Raises WorkdirError, on every process, if the disk cannot hold the checkpoint.

    Checked before orbax starts: a disk that fills in the middle of a save fails in
    several background threads at once. The previous checkpoints stay intact either way.
    """
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + _SPACE_MARGIN_BYTES
    try:
      free = shutil.disk_usage(os.fspath(self.directory)).free
    except (OSError, TypeError, ValueError):  # not a local filesystem: let orbax try
      return
    if _all_processes_agree(free >= needed):
      return
    raise WorkdirError(
        f'no space left on device for checkpoint step {step} in {self.directory}: it needs '
        f'about {needed / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free; free space and '
        f'rerun the same command: a rerun resumes from checkpoint step {self.latest_step}, the '
        'newest complete one')

  def wait(self) -> None:
    """Blocks until the pending asynchronous save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves (and deletions), then releases orbax's threads."""
    if not self._closed:
      self._manager.close()
      self._state_reader.close()
      self._closed = True

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # ---------------------------------------------------------------- restore

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
    """Restores the newest readable checkpoint into ``abstract_state``'s layout.

    ``abstract_state`` is the state pytree with ``jax.ShapeDtypeStruct`` leaves
    whose ``sharding`` says where each restored array goes, so a checkpoint
    written on N devices restores onto any other mesh.

    Returns ``(step, state)``, or None when there is no readable checkpoint.
    A checkpoint that fails to restore is renamed ``<step>.corrupt-<time>``
    with one warning, and the next-newest is tried. All processes restore the
    same step: they agree on success before accepting one.

    The read goes through orbax's item handler rather than
    ``CheckpointManager.restore``: the latter ends in a cross-process barrier,
    and with sharded arrays each process reads only its own shards, so damage
    can fail the read on some processes only. Those would skip the barrier
    while the others wait in it (a hang, or a crash of the collective backend).
    The handler has no barrier, so every process reaches the agreement step.

    Raises:
      CheckpointMismatch: the checkpoint is readable but its arrays' names or
        shapes differ from ``abstract_state`` (a different model or optimizer).
    """
    self.wait()
    moved_aside = []
    while (step := self._manager.latest_step()) is not None:
      error = self._check_matches(step, abstract_state)
      state = None
      if error is None:
        try:
          state = self._state_reader.restore(
              self.directory / str(step) / STATE_ITEM,
              args=ocp.args.StandardRestore(abstract_state),
          )
        except Exception as e:  # Damage shows up as many exception types.
          error = e
      if _all_processes_agree(error is None):
        return step, state
      self._move_aside(step, error)
      moved_aside.append(step)

    if moved_aside:
      log.warning(
          'No readable checkpoint left in %s (moved aside steps %s); '
          'starting from scratch.', self.directory, moved_aside)
    return None

  def _check_matches(self, step: int, abstract_state: Any) -> Exception | None:
    """Raises if checkpoint ``step`` holds a different pytree; returns read errors.

    Compares leaf names and shapes from the checkpoint's metadata, so a changed
    model gives one clear message instead of orbax's per-array errors, and its
    checkpoints are not mistaken for damaged ones. An unreadable metadata file
    is returned as the error (damage), as is a missing state item.
    """
    try:
      stored = self._manager.metadata(step).item_metadata[STATE_ITEM]
      stored_shapes = {
          path: tuple(meta.shape)
          for path, meta in ocp.tree.to_flat_dict(stored).items()
          if meta is not None
      }
    except Exception as e:
      return e
    if not stored_shapes:  # Metadata missing: let the restore itself decide.
      return None
    wanted_shapes = {
        path: _stored_shape(leaf)
        for path, leaf in ocp.tree.to_flat_dict(abstract_state).items()
    }
    if stored_shapes == wanted_shapes:
      return None

    def names(paths):
      return ', '.join('.'.join(p) for p in sorted(paths)[:5]) or '-'

    differ = [
        p for p in stored_shapes.keys() & wanted_shapes.keys()
        if stored_shapes[p] != wanted_shapes[p]
    ]
    raise CheckpointMismatch(
        f'Checkpoint {self.directory / str(step)} holds a different state than '
        'the one being restored (changed model/optimizer config with the same '
        'workdir?). Only in checkpoint: '
        f'{names(stored_shapes.keys() - wanted_shapes.keys())}; only in '
        f'target: {names(wanted_shapes.keys() - stored_shapes.keys())}; shape '
        f'differs: {names(differ)}. Use a new workdir, or move the '
        'checkpoints away to start fresh.'
    )

  def _move_aside(self, step: int, error: Exception | None) -> None:
    """Renames a damaged step directory so orbax ignores it; process 0 acts."""
    if jax.process_index() == 0:
      reason = one_line(error) if error else 'failed to restore on another process'
      target = self._rename_aside(self.directory / str(step))
      log.warning(
          'Checkpoint step %d is unreadable (%s); moved it to %s and falling '
          'back to the previous checkpoint.', step, reason, target.name)
    _sync_processes(f'resnet_jax.checkpoint.moved_aside.{step}')
    self._manager.reload()

  @staticmethod
  def _rename_aside(step_dir: epath.Path, reason: str = 'corrupt') -> epath.Path:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target = step_dir.parent / f'{step_dir.name}.{reason}-{stamp}'
    suffix = 1
    while target.exists():
      target = step_dir.parent / f'{step_dir.name}.{reason}-{stamp}-{suffix}'
      suffix += 1
    step_dir.rename(target)
    return target

  # -------------------------------------------- checks before orbax starts

  def _report_uncommitted_saves(self) -> None:
    """Warns about saves that were interrupted; orbax's cleanup removes them."""
    for path in sorted(self.directory.iterdir()):
      if _TMP_MARKER in path.name:
        log.warning(
            'Checkpoint %s was never committed (save interrupted); it is not '
            'restorable and orbax will remove it.', path.name)

  def _move_aside_steps_with_unreadable_metrics(self) -> None:
    """Moves aside steps whose metrics file orbax would fail to parse.

    Orbax reads every step's metrics while constructing the manager and raises
    on invalid JSON, which would make the whole run fail to start.
    """
    for step_dir in self.directory.iterdir():
      metrics_file = step_dir / _METRICS_ITEM / _METRICS_ITEM
      if not step_dir.name.isdigit() or not metrics_file.exists():
        continue
      try:
        json.loads(metrics_file.read_text())
      except (ValueError, OSError) as e:
        target = self._rename_aside(step_dir)
        log.warning(
            'Checkpoint step %s is unreadable (metrics file: %s); moved it to '
            '%s.', step_dir.name, one_line(e), target.name)


class _KeepStep:
  """Preservation policy: keeps the checkpoint at ``step`` (None: none), which the
  Checkpointer moves forward as steps are marked good."""

  def __init__(self, step: int | None):
    self.step = step

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [checkpoint.step == self.step for checkpoint in checkpoints]

  def __repr__(self) -> str:
    return f'_KeepStep({self.step})'


class _MetricScore:
  """``best_fn`` for orbax: the metric's value; missing or NaN ranks worst.

  A class rather than a lambda so that its repr in orbax's logs is readable.
  """

  def __init__(self, key: str, mode: str):
    self.key = key
    self.worst = -math.inf if mode == 'max' else math.inf

  def __call__(self, metrics: Any) -> float:
    value = metrics.get(self.key) if isinstance(metrics, Mapping) else None
    if value is None or math.isnan(float(value)):
      return self.worst
    return float(value)

  def __repr__(self) -> str:
    return f'_MetricScore({self.key!r})'


def _json_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """Metrics as JSON-safe Python scalars (numpy/jax scalars converted)."""
  if metrics is None:
    return None
  return {str(k): to_json_scalar(v) for k, v in metrics.items()}


def _stored_shape(leaf: Any) -> tuple[int, ...]:
  """Shape as orbax stores it: a typed PRNG key is stored as its key data."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(
        jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  return tuple(leaf.shape)


def one_line(error: BaseException, limit: int = 240) -> str:
  """The root cause of ``error`` as one short line, for the warning."""
  # Orbax wraps TensorStore's precise error ('OUT_OF_RANGE: ... byte range ...')
  # in a generic one; the innermost exception says what is actually wrong.
  while (cause := error.__cause__ or error.__context__) is not None:
    error = cause
  text = ' '.join(str(error).split(' [tensorstore_spec')[0].split())
  if len(text) > limit:
    text = text[: limit - 3] + '...'
  return f'{type(error).__name__}: {text}'


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _all_processes_agree(ok: bool) -> bool:
  """True only if ``ok`` is True on every process (always the same answer)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# ----------------------------------------------------------------- disk full

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# TensorStore, under orbax, reports a full disk as a ValueError whose text ends with the
# OS error code: '... No space left on device [os_error_code='28']'.
_TENSORSTORE_DISK_FULL = tuple(f"[os_error_code='{code}']" for code in _DISK_FULL)
_TENSORSTORE_FILE = re.compile(r'Failed writing: "([^"]+)"')


class _DiskFullReportedOnce(logging.Filter):
  """Drops orbax's own error logs of a full disk (each with a traceback, from several
  threads): the engine reports it once, as one line naming the fix."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and disk_full(error) is not None) or
                any(marker in record.getMessage() for marker in _TENSORSTORE_DISK_FULL))


def disk_full(error: BaseException) -> str | None:
  """The file that a full disk (or quota) failed to write, behind ``error`` however orbax
  or TensorStore wrapped it ('' if unnamed); None if the disk is not the cause."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return str(error.filename or '')
    text = str(error)
    if any(marker in text for marker in _TENSORSTORE_DISK_FULL):
      found = _TENSORSTORE_FILE.search(text)
      return found.group(1) if found else ''
    error = error.__cause__ or error.__context__
  return None


logging.getLogger('absl').addFilter(_DiskFullReportedOnce())  # orbax logs through absl


# ----------------------------------------------------------------- the lock


class WorkdirLock:
  """One training process (or multi-process job) per workdir.

  Process 0 creates ``<workdir>/lock.json`` (host, pid, start time) atomically and
  touches it every ``heartbeat_s`` seconds while it trains; the other processes of
  its job rely on it. A second process finds the file and refuses, naming the holder,
  unless the holder is gone:

  * same host: its pid no longer runs (or runs a process started at another time,
    a reused pid);
  * another host: its heartbeat is older than ``stale_after_s`` (its pid cannot be
    checked from here).

  A stale lock is renamed aside and replaced; of two processes doing so at once only
  one succeeds. Use as a context manager on every process.
  """

  FILE = 'lock.json'

  def __init__(self, workdir, *, heartbeat_s: float = 30.0, stale_after_s: float = 300.0):
    self.path = pathlib.Path(workdir).absolute() / self.FILE
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self.taken_over: dict | None = None  # the stale holder this process replaced
    self._token = uuid.uuid4().hex
    self._held = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock on process 0; raises WorkdirInUse (on all processes) if held."""
    refusal = None
    if jax.process_index() == 0:
      try:
        self._take()
      except WorkdirInUse as error:
        refusal = error
    if not _all_processes_agree(refusal is None):
      self.release()
      raise refusal or WorkdirInUse(
          f'{self.path.parent} is in use by another run (see process 0); wait for it or '
          'use another --workdir')
    if self._held:
      self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
      self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._held:
      self._held = False
      holder = self._read()
      if holder is not None and holder.get('token') == self._token:
        self.path.unlink(missing_ok=True)

  # -------------------------------------------------------------- internals

  def _take(self) -> None:
    for _ in range(3):  # a stale lock moved aside by another process: look again
      if self._create():
        self._held = True
        return
      holder = self._read()
      if holder is None and not self.path.exists():
        continue
      age = self._age()
      if self._alive(holder, age):
        raise WorkdirInUse(self._describe(holder, age))
      if self._move_aside(holder):
        self.taken_over = holder
    raise WorkdirInUse(f'{self.path.parent} is being locked by another process at this '
                       'moment; retry, or use another --workdir')

  def _create(self) -> bool:
    """Writes the whole lock file under a temporary name, then links it into place:
    the link fails if a lock exists, and a reader never sees a half-written file."""
    record = {'host': socket.gethostname(), 'pid': os.getpid(),
              'pid_start': _process_start(os.getpid()), 'started': time.time(),
              'token': self._token}
    tmp = self.path.parent / f'{self.FILE}.{self._token}.tmp'
    try:
      tmp.write_text(json.dumps(record) + '\n')
    except OSError as error:
      raise WorkdirError(f'cannot write in {self.path.parent} ({error.strerror}); give a '
                         'writable --workdir') from None
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      tmp.unlink(missing_ok=True)

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def _age(self) -> float:
    try:
      return max(0.0, time.time() - os.stat(self.path).st_mtime)
    except OSError:
      return math.inf

  def _alive(self, holder: dict | None, age: float) -> bool:
    if holder is None:  # unreadable: trust only a fresh heartbeat
      return age < self.stale_after_s
    if holder.get('host') != socket.gethostname():
      return age < self.stale_after_s
    pid = int(holder.get('pid', -1))
    if pid <= 0:
      return age < self.stale_after_s
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass  # runs, under another user
    recorded, current = holder.get('pid_start'), _process_start(pid)
    return recorded is None or current is None or recorded == current

  def _move_aside(self, holder: dict | None) -> bool:
    """Renames the stale lock aside; False if it was not the one read (a race)."""
    aside = self.path.parent / f'{self.FILE}.stale-{self._token}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    moved = json.loads(aside.read_text()) if aside.exists() else None
    if holder is not None and moved is not None and moved.get('token') != holder.get('token'):
      try:  # a live lock taken in between: put it back
        os.link(aside, self.path)
      except FileExistsError:
        pass
      aside.unlink(missing_ok=True)
      return False
    aside.unlink(missing_ok=True)
    return True

  def _describe(self, holder: dict | None, age: float) -> str:
    where = (f'pid {holder.get("pid")} on host {holder.get("host")}' if holder
             else 'another process')
    since = (f', started {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))}'
             if holder and 'started' in holder else '')
    return (f'{self.path.parent} is in use by {where}{since}, lock heartbeat {age:.0f} s '
            'ago; wait for it to finish (or stop it), or use another --workdir')

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.path)
      except OSError:
        pass  # a full or lost disk shows up in the training loop itself


def _process_start(pid: int) -> str | None:
  """When ``pid`` started (Linux: ticks since boot, /proc/<pid>/stat field 22); None
  where unknown. Tells a live holder from a new process that reuses its pid."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as stat:
      return stat.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None
