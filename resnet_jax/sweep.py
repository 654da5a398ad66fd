"""Sweeps: a config file's `get_sweep(arg)` expanded into runs, executed, and collected.

A sweep is a list of points, each a dict {config path: value}, built with three helpers:

    sweep.product(sweep.axis('model.depth', [20, 32, 44, 56, 110]),
                  sweep.axis('model.shortcut', ['A', 'none']),
                  sweep.axis('seed', [0, 1, 2]))
    sweep.zip(sweep.axis('model.depth', [16, 28]), sweep.axis('model.width', [8, 10]))

`python launch.py --config=<file>[:arg] --sweep --workdir=W` then

1. expands every point against the config (command-line --config.x=y overrides included)
   and validates it: unknown path, wrong type, impossible architecture, each as one line
   before anything runs;
2. runs each point in `W/<name>`, `name` made from its overrides (`depth=20,shortcut=A,
   seed=0`), skipping points with a results.json (or diverged.json) whose recorded config
   (config.json) is the point's config now, and resuming interrupted ones from their
   checkpoints. A point whose record differs (the command's --config overrides changed,
   say) stops the sweep before anything runs, naming the points and keys: its results
   belong to another config. Executors: here, one point after another
   (`local`), or one submitit job per point (`submitit_local`, one per GPU at a time;
   `slurm`). Points that differ only in seed / learning_rate / weight_decay / momentum can
   train as one vmapped program (`sweep_batched.py`, --sweep_vmap);
3. writes `W/results.csv` and `W/report.md` with figures (`report.py`), including the
   section returned by the config file's `analyze(workdir, runs)` when it has one.

A config file may also define `run_point(config, workdir) -> dict` to replace training
(`experiments/gradient_flow.py` measures gradients instead); it must then write
`workdir/results.json` itself. `--mode=summary --sweep` lists the points and their status
and refreshes the report from the finished ones, training nothing.
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import hashlib
import importlib.util
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from resnet_jax import compilation_cache, report
from resnet_jax.errors import ConfigError, SweepError, TrainingDiverged

RESULTS_FILE = 'results.json'
DIVERGED_FILE = 'diverged.json'
SWEEP_FILE = 'sweep.json'
# Hyperparameters that live in the optimiser state (optim.py) or only pick the seed:
# runs that differ only in these share one compiled train step and can be vmapped.
VMAPPABLE_KEYS = ('seed', 'learning_rate', 'weight_decay', 'momentum')
_MAX_NAME = 120
_SAFE = re.compile(r'[^A-Za-z0-9._=,+-]')

Point = dict  # {config path: value}


# ----------------------------------------------------------------------------- spec


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
    raise SweepError(f'{what}: parts must be sweep.axis(...) lists of points (dicts)')
  return points


def product(*specs) -> list[Point]:
  """Every combination (the first spec varies slowest), like itertools.product."""
  parts = [_as_points(spec, 'sweep.product') for spec in specs]
  return [_merge(combo) for combo in itertools.product(*parts)]


def zip(*specs) -> list[Point]:  # pylint: disable=redefined-builtin
  """Points taken in lockstep; every spec must have the same length."""
  parts = [_as_points(spec, 'sweep.zip') for spec in specs]
  lengths = [len(part) for part in parts]
  if len(set(lengths)) > 1:
    described = ', '.join(f'{"+".join(part[0])} has {len(part)}' for part in parts)
    raise SweepError(f'sweep.zip needs equally long axes: {described} values')
  return [_merge(combo) for combo in builtins.zip(*parts)]


# ----------------------------------------------------------------------------- names


def _format_value(value) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return '-'.join(_format_value(v) for v in value) or 'empty'
  return str(value)


def _short_keys(paths: Iterable[str]) -> dict[str, str]:
  """The last path component ('model.depth' -> 'depth'), or the full path where that clashes."""
  paths = list(dict.fromkeys(paths))
  last = [path.rsplit('.', 1)[-1] for path in paths]
  return {path: short if last.count(short) == 1 else path for path, short in builtins.zip(paths, last)}


def point_name(point: Point, short_keys: dict[str, str] | None = None) -> str:
  """A short, filesystem-safe, deterministic folder name: 'depth=20,shortcut=A,seed=0'."""
  if not point:
    return 'base'
  short_keys = short_keys or _short_keys(point)
  name = ','.join(f'{short_keys[path]}={_format_value(value)}' for path, value in point.items())
  name = _SAFE.sub('_', name)
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_MAX_NAME - 11]}~{digest}'
  return name


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
    from resnet_jax import config as config_lib, metrics  # pylint: disable=g-import-not-at-top
    recorded = metrics.read_config_record(self.workdir)
    return None if recorded is None else config_lib.differences(recorded, self.config)

  def stale_reason(self) -> str | None:
    """Why this point's folder holds another config's run ('model.depth 20 -> 14'); None
    if it does not.

    Results count only if the recorded config equals the point's config; a partial run
    may differ only where a resume may (config.RESUMABLE_KEYS).
    """
    from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    changed = self.differences()
    if changed is None:
      return 'results without a config.json' if self.has_results() else None
    if not self.has_results():
      changed = {key: change for key, change in changed.items()
                 if key not in config_lib.RESUMABLE_KEYS}
    return config_lib.describe_differences(changed, limit=3) if changed else None

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
  from resnet_jax import config as config_lib  # the full config check (imports models)
  if isinstance(points, dict) or not isinstance(points, Sequence):
    raise SweepError(f'get_sweep must return a list of points (dicts), got {type(points).__name__}')
  if not points:
    raise SweepError('get_sweep returned no points')
  if not all(isinstance(point, dict) for point in points):
    raise SweepError('get_sweep must return a list of dicts {config path: value}')
  short_keys = _short_keys(path for point in points for path in point)
  runs: list[Run] = []
  seen: dict[str, int] = {}
  for index, point in enumerate(points):
    name = point_name(point, short_keys)
    if name in seen:
      raise SweepError(f'sweep points {seen[name]} and {index} are the same ({name}); '
                       'remove the duplicate')
    seen[name] = index
    point_config = apply_overrides(config, point)
    try:
      config_lib.validate(point_config)
    except ConfigError as error:
      raise SweepError(f'sweep point {name}: {error}') from None
    runs.append(Run(name=name, overrides=dict(point), config=point_config,
                    workdir=Path(workdir) / name))
  return runs


def load_module(config_file: str | Path):
  """Imports a config file by path (as config_flags does), so its sweep hooks can be read.

  The repository root (the config file's grandparent) goes on sys.path first, so
  experiment files can share `experiments/common.py` from any working directory.
  """
  path = Path(config_file).resolve()
  root = str(path.parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f'_sweep_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sweep_points(module, arg: str | None) -> list[Point]:
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{module.__file__} has no get_sweep(arg) function, so it cannot run with '
                     '--sweep; define one returning sweep.product(...) or a list of dicts')
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


# ----------------------------------------------------------------------------- grouping


def architecture_key(config) -> str:
  """Everything but the vmappable keys: runs with equal keys share one train step."""
  values = config.to_dict()
  for key in VMAPPABLE_KEYS:
    values.pop(key, None)
  return json.dumps(values, sort_keys=True, default=repr)


def group_runs(runs: Sequence[Run], max_group: int) -> list[list[Run]]:
  """Runs in sweep order, batched where they differ only in seed / lr / wd / momentum.

  A group keeps the position of its first run; groups hold at most `max_group` runs.
  """
  if max_group <= 1:
    return [[run] for run in runs]
  groups: dict[str, list[list[Run]]] = {}
  ordered: list[list[Run]] = []
  for run in runs:
    key = architecture_key(run.config)
    open_groups = groups.setdefault(key, [])
    if open_groups and len(open_groups[-1]) < max_group:
      open_groups[-1].append(run)
    else:
      group = [run]
      open_groups.append(group)
      ordered.append(group)
  return ordered


# ----------------------------------------------------------------------------- execution

EXECUTORS = ('local', 'submitit_local', 'slurm')
VMAP_MODES = ('off', 'on', 'auto')
VMAP_GROUP_SIZE = 8  # at most this many runs share one vmapped program
# `auto` vmaps a group only if a short timing of both ways finds the vmapped step at least
# this much faster. On a 2-core CPU 4 x ResNet-20 vmapped ran at 0.29-0.36x the speed of
# one by one (sweep_batched.py), so `off` is the default.
VMAP_MIN_SPEEDUP = 1.2
_measured_speedups: dict[tuple[str, int], float] = {}


def check_vmap_mode(mode: str) -> None:
  if mode not in VMAP_MODES:
    raise SweepError(f'--sweep_vmap={mode!r} is not valid; allowed: {", ".join(VMAP_MODES)}')


def vmap_pays_off(runs: Sequence[Run]) -> bool:
  """`auto`: times a few steps one by one and vmapped on this machine, once per
  architecture and group size, and says whether vmapping is worth it."""
  from resnet_jax import sweep_batched  # pylint: disable=g-import-not-at-top
  key = (architecture_key(runs[0].config), len(runs))
  if key not in _measured_speedups:
    timing = sweep_batched.measure(runs)
    _measured_speedups[key] = timing['speedup']
    print(f'  vmap check ({len(runs)} x {timing["model"]}): one by one '
          f'{timing["separate_img_per_s"]:,.0f} img/s, vmapped {timing["vmapped_img_per_s"]:,.0f}'
          f' img/s ({timing["speedup"]:.2f}x)', flush=True)
  return _measured_speedups[key] >= VMAP_MIN_SPEEDUP


def _write_json(path: Path, value) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(value, indent=2) + '\n')
  tmp.replace(path)


def record_divergence(run: Run, error: Exception) -> None:
  """A diverged run is a result (e.g. too high a learning rate), recorded so reruns skip it."""
  from resnet_jax.model import model_name  # pylint: disable=g-import-not-at-top
  run.workdir.mkdir(parents=True, exist_ok=True)
  _write_json(run.workdir / DIVERGED_FILE,
              {'model': model_name(run.config.model), 'diverged': True,
               'message': str(error)})


def run_single(run: Run, run_point: Callable | None = None) -> dict[str, Any]:
  """Trains (or runs the config file's `run_point` on) one point; resumes from its checkpoints."""
  from resnet_jax import metrics, train  # pylint: disable=g-import-not-at-top
  runner = run_point or train.train_and_evaluate
  if run_point is not None:  # train_and_evaluate records its config itself
    run.workdir.mkdir(parents=True, exist_ok=True)
    metrics.write_config_record(run.workdir, run.config)
  try:
    return runner(run.config, run.workdir)
  except TrainingDiverged as error:
    record_divergence(run, error)
    print(f'  {run.name}: diverged ({error})', flush=True)
    return {'diverged': True}


def run_groups(groups: Sequence[Sequence[Run]], run_point: Callable | None = None,
               vmap: str = 'off') -> bool:
  """Runs groups one after another on the local devices; False if stopped by SIGTERM.

  A group's unfinished runs train as one vmapped program with vmap='on', or with 'auto'
  where `vmap_pays_off`; otherwise one by one.
  """
  check_vmap_mode(vmap)
  total = sum(len(group) for group in groups)
  done = 0
  for group in groups:
    pending = [run for run in group if not run.is_finished()]
    for run in group:
      if run.is_finished():
        done += 1
        print(f'[{done}/{total}] {run.name}: finished earlier, skipped', flush=True)
    if not pending:
      continue
    if len(pending) > 1 and vmap != 'off' and (vmap == 'on' or vmap_pays_off(pending)):
      from resnet_jax import sweep_batched  # pylint: disable=g-import-not-at-top
      print(f'[{done + 1}-{done + len(pending)}/{total}] vmapped together: '
            f'{", ".join(run.name for run in pending)}', flush=True)
      outcomes = sweep_batched.train_group(pending)
      done += len(pending)
    else:
      outcomes = []
      for run in pending:
        done += 1
        print(f'[{done}/{total}] {run.name}', flush=True)
        outcomes.append(run_single(run, run_point))
        if outcomes[-1].get('preempted'):
          break
    stopped = [outcome for outcome in outcomes if outcome.get('preempted')]
    if stopped:
      print(f'{stopped[0].get("signal") or "SIGTERM"}: sweep stopped; rerun the same command to '
            'resume.', flush=True)
      return False
  return True


def run_job(groups: Sequence[Sequence[Run]], config_file: str | None, vmap: str = 'off',
            cache_dir: str | None = None) -> bool:
  """What one submitit job runs: its groups, locally, with the compilation cache on.

  Module-level (picklable by reference). The config file is re-imported by path in the
  job for its optional `run_point`, since a config module cannot be pickled by name.
  """
  compilation_cache.enable(cache_dir)
  run_point = getattr(load_module(config_file), 'run_point', None) if config_file else None
  return run_groups(groups, run_point, vmap)


def _parse_executor_args(text: str) -> dict[str, Any]:
  """'partition=gpu,timeout_min=720,gpus_per_node=1' -> {...} with ints/floats converted."""
  values: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in (text or '').split(','))):
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise SweepError(f'--sweep_executor_args item {item!r} is not key=value')
    for convert in (int, float):
      try:
        value = convert(value)
        break
      except ValueError:
        pass
    values[key.strip()] = value
  return values


def _local_gpu_count() -> int:
  """GPUs on this host without initialising JAX here (the jobs need the memory)."""
  import os
  import shutil
  import subprocess
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return len([d for d in visible.split(',') if d.strip()])
  if shutil.which('nvidia-smi') is None:
    return 0
  listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, check=False)
  return len([line for line in listing.stdout.splitlines() if line.startswith('GPU ')])


def submit_jobs(groups: Sequence[Sequence[Run]], workdir: Path, executor: str,
                executor_args: str, config_file: str | None, vmap: str = 'off',
                poll_s: float = 1.0) -> list[str] | None:
  """One submitit job per group; waits for all; returns one line per failed job.

  `slurm`: every group is submitted at once (as an array) with the given SLURM parameters
  (`wait=0` returns right after submitting, with None). The launcher waits for the jobs;
  if it is stopped, rerunning skips finished points but submits the unfinished ones
  again, whether or not their earlier jobs still run.
  `submitit_local`: jobs run as local processes, `parallel` at a time (default: one per
  GPU, else 1), each pinned to its own GPU, so a multi-GPU host runs one point per GPU.
  """
  import submitit  # pylint: disable=g-import-not-at-top
  options = _parse_executor_args(executor_args)
  folder = workdir / 'submitit'
  pending = [list(group) for group in groups if any(not run.is_finished() for run in group)]
  if not pending:
    return []
  failures: list[str] = []
  label = lambda group: '+'.join(run.name for run in group)

  if executor == 'slurm':
    wait = bool(options.pop('wait', 1))
    slurm = submitit.AutoExecutor(folder=folder, cluster='slurm')
    slurm.update_parameters(name=f'sweep-{workdir.name}', **options)
    with slurm.batch():
      jobs = [slurm.submit(run_job, [group], config_file, vmap) for group in pending]
    for job, group in builtins.zip(jobs, pending):
      print(f'submitted {job.job_id}: {label(group)}', flush=True)
    if not wait:
      return None
    for job, group in builtins.zip(jobs, pending):
      failures += _job_failure(job, label(group))
    return failures

  gpus = _local_gpu_count()
  parallel = int(options.pop('parallel', max(gpus, 1)))
  local = submitit.LocalExecutor(folder=folder)
  if options:
    local.update_parameters(**options)
  free_slots = list(range(parallel))
  running: dict[Any, tuple[int, list[Run]]] = {}
  queue = list(pending)
  while queue or running:
    while queue and free_slots:
      slot, group = free_slots.pop(0), queue.pop(0)
      if gpus:
        local.update_parameters(visible_gpus=[slot % gpus], gpus_per_node=1)
      job = local.submit(run_job, [group], config_file, vmap)
      print(f'started local job {job.job_id} on slot {slot}: {label(group)}', flush=True)
      running[job] = (slot, group)
    finished = [job for job in running if job.done()]
    if not finished:
      time.sleep(poll_s)
    for job in finished:
      slot, group = running.pop(job)
      free_slots.append(slot)
      failures += _job_failure(job, label(group))
  return failures


def _job_failure(job, label: str) -> list[str]:
  """[] if the job succeeded, else one line: its last error line and where its log is."""
  try:
    job.result()
  except Exception as error:  # pylint: disable=broad-except
    log = Path(job.paths.stderr)
    lines = log.read_text(errors='replace').splitlines() if log.exists() else []
    last = next((line.strip() for line in reversed(lines) if line.strip()), type(error).__name__)
    return [f'job {job.job_id} ({label}): {last} (log: {log})']
  return []


# ----------------------------------------------------------------------------- collection

def _architecture_summary(config, cache: dict) -> dict[str, Any]:
  from resnet_jax import summary  # pylint: disable=g-import-not-at-top
  key = json.dumps([config.model.to_dict(), config.dataset.image_size,
                    config.dataset.name, config.dataset.num_classes], sort_keys=True)
  if key not in cache:
    try:
      cache[key] = summary.summarize(config)
    except Exception as error:  # pylint: disable=broad-except
      print(f'  (no params/FLOPs for {config.model.to_dict()}: {error})', flush=True)
      cache[key] = {'params': None, 'flops_per_example': None}
  return cache[key]


def collect(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """One row per run: its overrides, params, FLOPs and results (status 'missing' if none)."""
  from resnet_jax.model import model_name  # pylint: disable=g-import-not-at-top
  cache: dict = {}
  rows = []
  for run in runs:
    info = _architecture_summary(run.config, cache)
    results = run.results() or {}
    status = 'diverged' if results.get('diverged') else ('done' if results else
                                                         'stale' if run.has_results() else
                                                         'missing')
    row = {'name': run.name, **run.overrides,
           'model': results.get('model', model_name(run.config.model)),
           'params': info['params'], 'flops_per_example': info['flops_per_example'],
           'status': status}
    for key in report.RESULT_COLUMNS[4:]:
      row[key] = results.get(key)
    for key, value in results.items():  # extra scalars of custom run_point results
      if key not in row and isinstance(value, (int, float, str, bool)):
        row[key] = value
    rows.append(row)
  return rows


def _status_line(run: Run) -> str:
  if run.stale_reason():
    return 'stale'
  if run.is_finished():
    return 'diverged' if (run.workdir / DIVERGED_FILE).exists() else 'done'
  return 'partial' if (run.workdir / 'checkpoints').exists() else 'todo'


def describe(runs: Sequence[Run], groups: Sequence[Sequence[Run]]) -> str:
  """The dry run (`--mode=summary --sweep`): every point, its model, size and status."""
  cache: dict = {}
  lines = [f'{"point":<44} {"model":<22} {"params":>12} {"GFLOPs":>8} {"status":>9} group']
  group_of = {id(run): index for index, group in enumerate(groups) for run in group}
  for run in runs:
    info = _architecture_summary(run.config, cache)
    from resnet_jax.model import model_name  # pylint: disable=g-import-not-at-top
    params = f'{info["params"]:,}' if info['params'] else '?'
    flops = f'{info["flops_per_example"] / 1e9:.3f}' if info['flops_per_example'] else '?'
    lines.append(f'{run.name:<44} {model_name(run.config.model):<22} {params:>12} '
                 f'{flops:>8} {_status_line(run):>9} {group_of[id(run)]}')
  lines.append(f'{len(runs)} points in {len(groups)} group(s) (a group may be vmapped)')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- entry point


def split_config_argument(text: str) -> tuple[str, str | None]:
  """'experiments/degradation.py:quick,seeds=3' -> ('experiments/degradation.py', 'quick,seeds=3')."""
  path, sep, arg = str(text).partition('.py:')
  if not sep:
    return str(text), None
  return path + '.py', arg or None


def main(config, config_flag: str, workdir, *,
         executor: str = 'local', executor_args: str = '', vmap: str = 'off',
         dry_run: bool = False, command: str | None = None) -> list[dict[str, Any]]:
  """`launch.py --sweep`: expand and validate, run what is left, collect, report, analyze.

  `config_flag` is the --config value, 'file.py[:arg]'; `config` the config it gave, with
  any --config.x=y overrides, which every point inherits.
  """
  config_file, config_arg = split_config_argument(config_flag)
  if executor not in EXECUTORS:
    raise SweepError(f'--sweep_executor={executor!r} is not valid; allowed: '
                     f'{", ".join(EXECUTORS)}')
  workdir = Path(workdir)
  module = load_module(config_file)
  runs = expand(config, sweep_points(module, config_arg), workdir)
  run_point = getattr(module, 'run_point', None)
  check_vmap_mode(vmap)
  # Candidate groups; with 'auto' whether they are vmapped is decided where they run.
  group_size = 1 if run_point is not None or vmap == 'off' else VMAP_GROUP_SIZE
  groups = group_runs(runs, group_size)
  command = command or 'python ' + ' '.join(sys.argv)
  if dry_run:
    print(describe(runs, groups))
    if any(run.is_finished() for run in runs):  # refresh the report; keep the command that ran
      recorded = workdir / SWEEP_FILE
      recorded = json.loads(recorded.read_text()) if recorded.exists() else {}
      return write_report(module, runs, workdir, recorded.get('command', command), config_flag,
                          recorded.get('wall_s'))
    return []

  check_records(runs)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_json(workdir / SWEEP_FILE, {'command': command, 'config_file': str(config_file),
                                     'config_arg': config_arg,
                                     'points': [run.overrides for run in runs]})
  start = time.time()
  if executor == 'local':
    compilation_cache.enable()  # points sharing an architecture compile once
    if not run_groups(groups, run_point, vmap):
      return []
  else:
    failures = submit_jobs(groups, workdir, executor, executor_args, str(config_file), vmap)
    if failures is None:
      print('jobs submitted; when they are done, `--mode=summary` with the same command '
            'writes results.csv and report.md', flush=True)
      return []
    if failures:
      raise SweepError(f'{len(failures)} job(s) failed; first: {failures[0]}')
  wall_s = time.time() - start
  _write_json(workdir / SWEEP_FILE, {**json.loads((workdir / SWEEP_FILE).read_text()),
                                     'wall_s': wall_s})
  return write_report(module, runs, workdir, command, config_flag, wall_s)


def write_report(module, runs: Sequence[Run], workdir: Path, command: str, config_flag: str,
                 sweep_wall_s: float | None = None) -> list[dict[str, Any]]:
  """results.csv, the config file's `analyze` section and report.md, from what has finished."""
  rows = collect(runs)
  sections = []
  if hasattr(module, 'analyze'):
    sections.append(module.analyze(workdir, runs) or '')
  report.write(workdir, rows, runs, command=command, source=config_flag, sections=sections,
               sweep_wall_s=sweep_wall_s)
  missing = [row['name'] for row in rows if row['status'] == 'missing']
  print(f'sweep: {len(rows) - len(missing)}/{len(rows)} points have results; '
        f'{workdir / "results.csv"}, {workdir / "report.md"}', flush=True)
  return rows
