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
  not damage, so those checkpoints are left alone.

Layout of one step, as written by orbax::

    <directory>/<step>/state/...            the train state (StandardSave)
    <directory>/<step>/metrics/metrics      metrics JSON, when best_metric is set
    <directory>/<step>/_CHECKPOINT_METADATA orbax's step metadata; its
                                            custom_metadata holds {'metrics': ...}
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from resnet_jax.metrics import to_json_scalar

log = logging.getLogger(__name__)

STATE_ITEM = 'state'
# Where orbax keeps the metrics of a step (`orbax.checkpoint.checkpoint_manager`);
# it parses this file while constructing the manager, so a damaged one must be
# moved aside first.
_METRICS_ITEM = 'metrics'
# Orbax writes `<step>.orbax-checkpoint-tmp-<n>` and renames it when complete.
_TMP_MARKER = '.orbax-checkpoint-tmp'


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

    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
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
    metrics = _json_metrics(metrics)
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
        metrics=metrics,
        force=force,
        custom_metadata={'metrics': metrics},
    )

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
      ValueError: the checkpoint is readable but its arrays' names or shapes
        differ from ``abstract_state`` (a different model or optimizer).
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
    raise ValueError(
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
      reason = _one_line(error) if error else 'failed to restore on another process'
      target = self._rename_aside(self.directory / str(step))
      log.warning(
          'Checkpoint step %d is unreadable (%s); moved it to %s and falling '
          'back to the previous checkpoint.', step, reason, target.name)
    _sync_processes(f'resnet_jax.checkpoint.moved_aside.{step}')
    self._manager.reload()

  @staticmethod
  def _rename_aside(step_dir: epath.Path) -> epath.Path:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target = step_dir.parent / f'{step_dir.name}.corrupt-{stamp}'
    suffix = 1
    while target.exists():
      target = step_dir.parent / f'{step_dir.name}.corrupt-{stamp}-{suffix}'
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
            '%s.', step_dir.name, _one_line(e), target.name)


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


def _one_line(error: BaseException, limit: int = 240) -> str:
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
