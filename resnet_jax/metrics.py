"""What a researcher sees while a run trains: metric files and a progress line.

* ``MetricWriter`` appends every logged scalar to ``<workdir>/metrics.jsonl`` (one
  JSON object per line, flushed at once: easy to load with pandas, survives
  resume because it is only ever appended to) and to TensorBoard event files in
  ``<workdir>/tensorboard`` (tensorboardX, no TensorFlow). tensorboardX writes
  from a background thread and its ``flush()`` does not wait for it, so the
  event files trail by up to ``TENSORBOARD_FLUSH_SECS``; ``close()`` writes all.
* ``Progress`` prints one status line with throughput and an ETA taken from the
  recent step rate, so compilation and slow start-up do not distort it.

The config record: ``config.json`` is written once, by the start that creates the run,
and never overwritten; a resumed start that changes one of the keys a resume may change
(schema.RESUMABLE_KEYS) appends the change to ``config_changes.jsonl``.
``read_config_record`` applies those changes to config.json: the config that produced the
run's results. A resumed start also logs ``resumed_from_step``; ``read_metrics`` drops
the records of the steps it trains again, so best-so-far values come from the trajectory
that was kept.

Non-finite values: NaN and +-Inf are written to ``metrics.jsonl`` as ``null``.
Strict JSON has no NaN, and ``null`` loads as a missing value in any reader
(pandas gives NaN), so a diverged loss shows as a gap instead of breaking the
file. TensorBoard receives the raw float.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import numpy as np

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
CONFIG_CHANGES_FILE = 'config_changes.jsonl'
RESULTS_FILE = 'results.json'  # what a finished run measured (train.final_results)
RESUMED_KEY = 'resumed_from_step'
TENSORBOARD_DIR = 'tensorboard'
TENSORBOARD_FLUSH_SECS = 5
_RESERVED_KEYS = ('step', 'time')


def to_json_scalar(value: Any) -> int | float | bool | None:
  """A Python int/float/bool for a Python, numpy or JAX scalar; None if not finite.

  Raises:
    TypeError: ``value`` is not a single number (e.g. an array of several).
  """
  array = np.asarray(value)  # Also fetches a JAX array from the device.
  if array.size != 1 or array.dtype.kind not in 'biuf':
    raise TypeError(
        f'Expected a numeric scalar, got {type(value).__name__} with shape '
        f'{array.shape} and dtype {array.dtype}.')
  item = array.reshape(()).item()
  if isinstance(item, float) and not math.isfinite(item):
    return None
  return item


class MetricWriter:
  """Appends scalars to ``metrics.jsonl`` and TensorBoard; no-op when disabled.

  Pass ``enabled=jax.process_index() == 0`` so that one process writes.
  """

  def __init__(self, workdir: os.PathLike | str, *, enabled: bool = True):
    self.workdir = os.fspath(workdir)
    self.enabled = enabled
    self._jsonl: TextIO | None = None  # Opened by the first write().
    self._tensorboard = None
    self._closed = False
    if not enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    # Imported here because tensorboardX imports torch when it is installed,
    # which is slow and not needed on processes that write nothing.
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tensorboard = SummaryWriter(
        logdir=os.path.join(self.workdir, TENSORBOARD_DIR),
        # tensorboardX names files by the second and overwrites on a clash,
        # so two writers started within a second would lose one file.
        filename_suffix=f'.{os.getpid()}.{uuid.uuid4().hex[:8]}',
        flush_secs=TENSORBOARD_FLUSH_SECS,
    )

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records ``metrics`` at ``step``: in metrics.jsonl at once, in TensorBoard soon."""
    if not self.enabled:
      return
    if self._closed:
      raise RuntimeError('MetricWriter.write() after close().')
    clashes = [key for key in _RESERVED_KEYS if key in metrics]
    if clashes:
      raise ValueError(f'Metric names {clashes} are reserved in metrics.jsonl.')
    step = int(step)
    values = {str(name): to_json_scalar(value) for name, value in metrics.items()}
    self._append({'step': step, 'time': time.time(), **values})
    for name, value in metrics.items():
      # The raw value, so TensorBoard shows NaN/Inf rather than a gap.
      raw = np.asarray(value, dtype=np.float64).reshape(()).item()
      self._tensorboard.add_scalar(str(name), raw, global_step=step)

  def mark_resumed(self, step: int) -> None:
    """Logs that a start resumes at ``step`` (metrics.jsonl only; see read_metrics)."""
    if self.enabled:
      self._append({'step': int(step), 'time': time.time(), RESUMED_KEY: int(step)})

  def _append(self, record: dict[str, Any]) -> None:
    if self._jsonl is None:
      # Append: a resumed run keeps everything the earlier runs logged. Opened
      # late so the file exists only once there is something in it.
      self._jsonl = _open_for_append(os.path.join(self.workdir, METRICS_FILE))
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    self._jsonl.flush()

  def write_config(self, config: Any) -> None:
    """Writes ``config`` (a ConfigDict or a plain mapping) to ``config.json``, once.

    An existing config.json is kept: it records the config that started the run.
    """
    if self.enabled:
      write_config_record(self.workdir, config)

  def write_config_changes(self, step: int, changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Appends ``{key: (recorded, new)}``, changed by a start resuming at ``step``."""
    if not self.enabled or not changes:
      return
    record = {'step': int(step), 'time': time.time(),
              'changes': {key: {'from': old, 'to': new} for key, (old, new) in changes.items()}}
    with _open_for_append(os.path.join(self.workdir, CONFIG_CHANGES_FILE)) as f:
      f.write(json.dumps(record, default=repr) + '\n')

  def close(self) -> None:
    self._closed = True
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _open_for_append(path: str) -> TextIO:
  """Opens ``path`` to append lines; ends a line torn by a crash or full disk first, so
  the next record starts on a line of its own."""
  torn = False
  if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path, 'rb') as existing:
      existing.seek(-1, os.SEEK_END)
      torn = existing.read(1) != b'\n'
  file = open(path, 'a', encoding='utf-8')
  if torn:
    file.write('\n')
  return file


def write_json(path: os.PathLike | str, value: Any) -> None:
  """`value` as indented JSON, written atomically: readers see the whole file or none."""
  path = pathlib.Path(path)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(value, indent=2) + '\n')
  tmp.replace(path)


def config_as_json(config: Any) -> dict[str, Any]:
  """A ConfigDict or mapping as JSON data (tuples become lists), as config.json holds it."""
  if hasattr(config, 'to_json_best_effort'):  # ml_collections.ConfigDict
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(dict(config), sort_keys=True, default=repr))


def write_config_record(workdir: os.PathLike | str, config: Any) -> bool:
  """Writes ``<workdir>/config.json`` unless it exists; returns whether it did."""
  path = os.path.join(os.fspath(workdir), CONFIG_FILE)
  if os.path.exists(path):
    return False
  text = json.dumps(config_as_json(config), indent=2, sort_keys=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  os.replace(tmp, path)
  return True


def read_config_record(workdir: os.PathLike | str) -> dict[str, Any] | None:
  """The config that produced a run: config.json with every recorded change applied.

  None when the workdir holds no config.json.
  """
  workdir = os.fspath(workdir)
  try:
    with open(os.path.join(workdir, CONFIG_FILE), encoding='utf-8') as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  for line in _json_lines(os.path.join(workdir, CONFIG_CHANGES_FILE)):
    for key, change in line.get('changes', {}).items():
      *parents, leaf = key.split('.')
      node = record
      for parent in parents:
        node = node.setdefault(parent, {})
      node[leaf] = change['to']
  return record


def read_metrics(workdir: os.PathLike | str) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` on the trajectory that was kept.

  A resumed start logs ``resumed_from_step``; the records of later steps logged before
  it (by a segment that was killed, or that diverged and was set aside) are dropped. A
  line torn by a crash is skipped.
  """
  kept: list[dict[str, Any]] = []
  for record in _json_lines(os.path.join(os.fspath(workdir), METRICS_FILE)):
    if RESUMED_KEY in record:
      kept = [r for r in kept if r['step'] <= record[RESUMED_KEY]]
    else:
      kept.append(record)
  return kept


def _json_lines(path: str) -> list[dict[str, Any]]:
  try:
    with open(path, encoding='utf-8') as lines:
      text = lines.read()
  except FileNotFoundError:
    return []
  records = []
  for line in text.splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue  # torn by a crash or a full disk
  return records


def format_duration(seconds: float | None) -> str:
  """Compact duration: '45s', '12m34s', '3h05m', '2d04h'; '--' if unknown."""
  if seconds is None or not math.isfinite(seconds):
    return '--'
  seconds = max(0, int(round(seconds)))
  minutes, secs = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  days, hours = divmod(hours, 24)
  if days:
    return f'{days}d{hours:02d}h'
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class Progress:
  """Prints a status line such as::

      step 1200/78200 | epoch 3.08 | 10,234 img/s | loss 0.8123 | lr 0.1000 | ETA 12m34s

  On a terminal the line is rewritten in place; otherwise (log files, job
  schedulers) each update is its own line.

  The ETA uses the step rate over the last ``window`` updates. Time before the
  first update (compilation, data loading, restoring a checkpoint) is never
  counted, so the estimate is right from the second update on.

  Args:
    total_steps: the step training stops at.
    global_batch: images per step over all devices; gives img/s when the
      caller does not pass it.
    steps_per_epoch: for the epoch column.
    stream: where to print.
    enabled: print nothing when False (pass ``jax.process_index() == 0``).
    window: number of recent updates the rate is averaged over.
    clock: seconds as a float; a parameter so tests can control time.
  """

  def __init__(
      self,
      total_steps: int,
      global_batch: int,
      steps_per_epoch: int,
      *,
      stream: TextIO = sys.stderr,
      enabled: bool = True,
      window: int = 20,
      clock: Callable[[], float] = time.monotonic,
  ):
    self.total_steps = int(total_steps)
    self.global_batch = int(global_batch)
    self.steps_per_epoch = max(1, int(steps_per_epoch))
    self.stream = stream
    self.enabled = enabled
    self._clock = clock
    self._recent = collections.deque(maxlen=max(2, window))  # (time, step)
    self._in_place = _is_tty(stream)
    self._line_open = False  # A TTY line is waiting for its newline.

  def steps_per_second(self) -> float | None:
    """Mean rate over the recent updates; None until two updates are seen."""
    if len(self._recent) < 2:
      return None
    (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
    if t1 <= t0 or s1 <= s0:
      return None
    return (s1 - s0) / (t1 - t0)

  def eta_seconds(self) -> float | None:
    rate = self.steps_per_second()
    if rate is None:
      return None
    return max(0, self.total_steps - self._recent[-1][1]) / rate

  def update(
      self,
      step: int,
      *,
      loss: float,
      lr: float,
      img_per_s: float | None = None,
  ) -> str:
    """Records that ``step`` is done and prints the line; returns it too."""
    step = int(step)
    if self._recent and step < self._recent[-1][1]:
      self._recent.clear()  # Restarted from an earlier step: old rate is stale.
    self._recent.append((self._clock(), step))
    if img_per_s is None:
      rate = self.steps_per_second()
      img_per_s = None if rate is None else rate * self.global_batch
    line = ' | '.join([
        f'step {step}/{self.total_steps}',
        f'epoch {step / self.steps_per_epoch:.2f}',
        '-- img/s' if img_per_s is None else f'{float(img_per_s):,.0f} img/s',
        f'loss {float(loss):.4f}',
        f'lr {_format_lr(float(lr))}',
        f'ETA {format_duration(self.eta_seconds())}',
    ])
    if self.enabled:
      if self._in_place:
        # \r returns to column 0, ESC[K clears what a longer line left behind.
        self.stream.write('\r' + line + '\x1b[K')
        self._line_open = True
      else:
        self.stream.write(line + '\n')
      self.stream.flush()
    return line

  def close(self) -> None:
    """Ends the in-place line so later output starts on a fresh line."""
    if self._line_open:
      self.stream.write('\n')
      self.stream.flush()
      self._line_open = False


def _format_lr(lr: float) -> str:
  return f'{lr:.4f}' if lr == 0 or abs(lr) >= 1e-3 else f'{lr:.2e}'


def _is_tty(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or closed.
    return False
