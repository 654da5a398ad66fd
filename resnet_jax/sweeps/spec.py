"""A sweep's spec: points built from axes, their names, and their expansion into runs.

A sweep is a list of points, each a dict {config path: value}, built with three helpers
(also `resnet_jax.sweeps.axis`, `.product` and `.zip`):

    sweeps.product(sweeps.axis('model.depth', [20, 32, 44, 56, 110]),
                   sweeps.axis('model.shortcut', ['A', 'none']),
                   sweeps.axis('seed', [0, 1, 2]))
    sweeps.zip(sweeps.axis('model.depth', [16, 28]), sweeps.axis('model.width', [8, 10]))

`expand` checks every point against the config (command-line --config.x=y overrides
included): an unknown path, a wrong type or an impossible architecture is one line before
anything runs. Each point becomes a `Run` in `W/<name>`, `name` made from its overrides
(`depth=20,shortcut=A,seed=0`, schema.point_name). A Run knows whether its folder holds
its results (results.json, or diverged.json for a run that diverged), whether those were
made by another config, and how to train itself (`Run.train`).

How the runs are executed and reported is execute.py; runs that differ only in seed,
learning rate, weight decay or momentum can train as one vmapped program (vmapped.py).
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from resnet_jax import schema
from resnet_jax.metrics import RESULTS_FILE
from resnet_jax.errors import ConfigError, SweepError, TrainingDiverged

DIVERGED_FILE = 'diverged.json'

Point = dict  # {config path: value}


# ----------------------------------------------------------------------------- points


def axis(path: str, values: Sequence[Any]) -> list[Point]:
  """One config path taking each of `values`: [{path: v0}, {path: v1}, ...]."""
  if not isinstance(path, str) or not path:
    raise SweepError(f'sweep axis path must be a non-empty string like "model.depth", got {path!r}')
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise SweepError(f'sweep axis {path!r}: values must be a list, got {values!r}')
  values = list(values)
  if not values:
    raise SweepError(f'sweep axis {path!r} is empty: give it at least one value')
  return [{path: value} for value in values]


def _merge(parts: Sequence[Point]) -> Point:
  merged: Point = {}
  for part in parts:
    for path, value in part.items():
      if path in merged:
        raise SweepError(f'sweep sets {path!r} twice in one point: combine its values in one axis')
      merged[path] = value
  return merged


def _as_points(spec, what: str) -> list[Point]:
  if isinstance(spec, dict):
    return [spec]
  points = list(spec)
  if not points:
    raise SweepError(f'{what}: one of its parts is empty')
  if not all(isinstance(point, dict) for point in points):
    raise SweepError(f'{what}: parts must be sweeps.axis(...) lists of points (dicts)')
  return points


def product(*specs) -> list[Point]:
  """Every combination (the first spec varies slowest), like itertools.product."""
  parts = [_as_points(spec, 'sweeps.product') for spec in specs]
  return [_merge(combo) for combo in itertools.product(*parts)]


def zip(*specs) -> list[Point]:  # pylint: disable=redefined-builtin
  """Points taken in lockstep; every spec must have the same length."""
  parts = [_as_points(spec, 'sweeps.zip') for spec in specs]
  lengths = [len(part) for part in parts]
  if len(set(lengths)) > 1:
    described = ', '.join(f'{"+".join(part[0])} has {len(part)}' for part in parts)
    raise SweepError(f'sweeps.zip needs equally long axes: {described} values')
  return [_merge(combo) for combo in builtins.zip(*parts)]



# ----------------------------------------------------------------------------- expansion


@dataclasses.dataclass
class Run:
  """One point of a sweep: its overrides, its full config and its own work directory."""
  name: str
  overrides: Point
  config: ml_collections.ConfigDict
  workdir: Path

  @property
  def results_file(self) -> Path:
    return self.workdir / RESULTS_FILE

  def has_results(self) -> bool:
    """Trained to the end (results.json), or stopped for good by a diverged loss."""
    return self.results_file.exists() or (self.workdir / DIVERGED_FILE).exists()

  def differences(self) -> dict[str, tuple[Any, Any]] | None:
    """{key: (recorded, now)} where the point's recorded config differs from its config
    now; None when nothing is recorded."""
    from resnet_jax import metrics  # pylint: disable=g-import-not-at-top
    recorded = metrics.read_config_record(self.workdir)
    return None if recorded is None else schema.differences(recorded, self.config)

  def stale_reason(self) -> str | None:
    """Why this point's folder holds another config's run ('model.depth 20 -> 14'); None
    if it does not.

    Results count only if the recorded config equals the point's config; a partial run
    may differ only where a resume may (schema.RESUMABLE_KEYS).
    """
    changed = self.differences()
    if changed is None:
      return 'results without a config.json' if self.has_results() else None
    if not self.has_results():
      changed = {key: change for key, change in changed.items()
                 if key not in schema.RESUMABLE_KEYS}
    return schema.describe_differences(changed, limit=3) if changed else None

  def is_finished(self) -> bool:
    """Has results, made by the point's config as it is now."""
    return self.has_results() and self.stale_reason() is None

  def results(self) -> dict[str, Any] | None:
    if not self.is_finished():
      return None
    for file in (self.results_file, self.workdir / DIVERGED_FILE):
      if file.exists():
        return json.loads(file.read_text())
    return None

  def train(self, run_point: Callable | None = None) -> dict[str, Any]:
    """Trains this point (or runs the config file's `run_point` on it), resuming from its
    checkpoints; a run that diverged is recorded as a result, so that reruns skip it."""
    from resnet_jax import metrics, train  # pylint: disable=g-import-not-at-top
    runner = run_point or train.train_and_evaluate
    if run_point is not None:  # train_and_evaluate records its config itself
      self.workdir.mkdir(parents=True, exist_ok=True)
      metrics.write_config_record(self.workdir, self.config)
    try:
      return runner(self.config, self.workdir)
    except TrainingDiverged as error:
      self.record_divergence(error)
      print(f'  {self.name}: diverged ({error})', flush=True)
      return {'diverged': True}

  def record_divergence(self, error: Exception) -> None:
    """A diverged run is a result (e.g. too high a learning rate): diverged.json."""
    from resnet_jax import metrics  # pylint: disable=g-import-not-at-top
    from resnet_jax.model import model_name  # pylint: disable=g-import-not-at-top
    self.workdir.mkdir(parents=True, exist_ok=True)
    metrics.write_json(self.workdir / DIVERGED_FILE, {
        'model': model_name(self.config.model), 'diverged': True, 'message': str(error)})


def _config_paths(config, prefix: str = '') -> list[str]:
  paths = []
  for key, value in config.items():
    path = f'{prefix}{key}'
    paths.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      paths += _config_paths(value, path + '.')
  return paths


def _set_path(config, path: str, value, known: list[str]) -> None:
  *parents, leaf = path.split('.')
  node = config
  for depth, key in enumerate(parents + [leaf]):
    is_leaf = depth == len(parents)
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      close = difflib.get_close_matches(path, known, n=1)
      hint = f'; did you mean {close[0]!r}?' if close else ''
      raise SweepError(f'sweep sets unknown config path {path!r}{hint}')
    if is_leaf:
      if isinstance(node[key], ml_collections.ConfigDict):
        raise SweepError(f'sweep sets {path!r}, a group of keys; set one of its keys instead')
      try:
        node[key] = value
      except (TypeError, ValueError):
        raise SweepError(f'sweep sets {path}={value!r}, but {path} holds '
                         f'{type(node[key]).__name__} values, like {node[key]!r}') from None
    else:
      node = node[key]


def apply_overrides(config, overrides: Point):
  """A copy of `config` with `overrides` set; unknown paths and wrong types raise SweepError."""
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=True)
  config.lock()
  known = _config_paths(config)
  for path, value in overrides.items():
    _set_path(config, path, value, known)
  return config


def expand(config, points: Sequence[Point], workdir) -> list[Run]:
  """Checks every point against `config` and returns its runs, before anything runs."""
  if isinstance(points, dict) or not isinstance(points, Sequence):
    raise SweepError(f'get_sweep must return a list of points (dicts), got {type(points).__name__}')
  if not points:
    raise SweepError('get_sweep returned no points')
  if not all(isinstance(point, dict) for point in points):
    raise SweepError('get_sweep must return a list of dicts {config path: value}')
  keys = schema.short_keys(path for point in points for path in point)
  runs: list[Run] = []
  seen: dict[str, int] = {}
  for index, point in enumerate(points):
    name = schema.point_name(point, keys)
    if name in seen:
      raise SweepError(f'sweep points {seen[name]} and {index} are the same ({name}); '
                       'remove the duplicate')
    seen[name] = index
    point_config = apply_overrides(config, point)
    try:
      schema.validate(point_config)
    except ConfigError as error:
      raise SweepError(f'sweep point {name}: {error}') from None
    runs.append(Run(name=name, overrides=dict(point), config=point_config,
                    workdir=Path(workdir) / name))
  return runs


def load_module(config_file: str | Path):
  """Imports a config file by path (as config_flags does), so its sweep hooks can be read.

  Its own imports (`from configs import recipes`, `from experiments import common`) find
  the repository root on sys.path, as launch.py's directory.
  """
  path = Path(config_file).resolve()
  spec = importlib.util.spec_from_file_location(f'_sweep_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sweep_points(module, arg: str | None) -> list[Point]:
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{module.__file__} has no get_sweep(arg) function, so it cannot run with '
                     '--sweep; define one returning sweeps.product(...) or a list of dicts')
  try:
    return module.get_sweep(arg)
  except ConfigError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise SweepError(f'{module.__file__}: get_sweep({arg!r}) raised {type(error).__name__}: '
                     f'{error}') from None


def check_records(runs: Sequence[Run]) -> None:
  """Stops the sweep, before anything runs, if a point's folder holds another config's run.

  Raised as one line naming the points and the keys that differ.
  """
  stale = [(run, reason) for run in runs if (reason := run.stale_reason())]
  if not stale:
    return
  listed = '; '.join(f'{run.name}: {reason}' for run, reason in stale[:4])
  more = f'; and {len(stale) - 4} more' if len(stale) > 4 else ''
  raise SweepError(
      f'{len(stale)} of {len(runs)} points hold runs of another config ({listed}{more}); rerun '
      'with a fresh --workdir for the new config, or without the changed --config overrides '
      'to keep these results, or delete those point folders to retrain them')



def split_config_argument(text: str) -> tuple[str, str | None]:
  """'experiments/degradation.py:quick,seeds=3' -> ('experiments/degradation.py', 'quick,seeds=3')."""
  path, sep, arg = str(text).partition('.py:')
  if not sep:
    return str(text), None
  return path + '.py', arg or None


