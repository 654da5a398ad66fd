"""Running a sweep: `launch.py --sweep`, from a config file's `get_sweep(arg)` to its report.

`python launch.py --config=<file>[:arg] --sweep --workdir=W` (`main`)

1. expands every point against the config (spec.expand): unknown path, wrong type,
   impossible architecture, each as one line before anything runs;
2. runs each point in `W/<name>`, skipping points with a results.json (or diverged.json)
   whose recorded config (config.json) is the point's config now, and resuming interrupted
   ones from their checkpoints. A point whose record differs (the command's --config
   overrides changed, say) stops the sweep before anything runs, naming the points and
   keys: its results belong to another config. Executors: here, one point after another
   (`local`), or one submitit job per point (`submitit_local`, one per GPU at a time;
   `slurm`). Points that differ only in seed / learning_rate / weight_decay / momentum can
   train as one vmapped program (vmapped.py, --sweep_vmap);
3. writes `W/results.csv` and `W/report.md` with figures (report.py), including the
   section returned by the config file's `analyze(workdir, runs)` when it has one.

A config file may also define `run_point(config, workdir) -> dict` to replace training
(`experiments/gradient_flow.py` measures gradients instead); it must then write
`workdir/results.json` itself. `--mode=summary --sweep` lists the points and their status
and refreshes the report from the finished ones, training nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from resnet_jax import compilation_cache, metrics
from resnet_jax.errors import SweepError
from resnet_jax.sweeps import report, spec, vmapped
from resnet_jax.sweeps.spec import Run

SWEEP_FILE = 'sweep.json'


# ----------------------------------------------------------------------------- execution

EXECUTORS = ('local', 'submitit_local', 'slurm')
VMAP_MODES = ('off', 'on', 'auto')
VMAP_GROUP_SIZE = 8  # at most this many runs share one vmapped program
# `auto` vmaps a group only if a short timing of both ways finds the vmapped step at least
# this much faster. On a 2-core CPU 4 x ResNet-20 vmapped ran at 0.29-0.36x the speed of
# one by one (vmapped.py), so `off` is the default.
VMAP_MIN_SPEEDUP = 1.2
_measured_speedups: dict[tuple[str, int], float] = {}


def check_vmap_mode(mode: str) -> None:
  if mode not in VMAP_MODES:
    raise SweepError(f'--sweep_vmap={mode!r} is not valid; allowed: {", ".join(VMAP_MODES)}')


def vmap_pays_off(runs: Sequence[Run]) -> bool:
  """`auto`: times a few steps one by one and vmapped on this machine, once per
  architecture and group size, and says whether vmapping is worth it."""
  key = (vmapped.architecture_key(runs[0].config), len(runs))
  if key not in _measured_speedups:
    timing = vmapped.measure(runs)
    _measured_speedups[key] = timing['speedup']
    print(f'  vmap check ({len(runs)} x {timing["model"]}): one by one '
          f'{timing["separate_img_per_s"]:,.0f} img/s, vmapped {timing["vmapped_img_per_s"]:,.0f}'
          f' img/s ({timing["speedup"]:.2f}x)', flush=True)
  return _measured_speedups[key] >= VMAP_MIN_SPEEDUP


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
      print(f'[{done + 1}-{done + len(pending)}/{total}] vmapped together: '
            f'{", ".join(run.name for run in pending)}', flush=True)
      outcomes = vmapped.train_group(pending)
      done += len(pending)
    else:
      outcomes = []
      for run in pending:
        done += 1
        print(f'[{done}/{total}] {run.name}', flush=True)
        outcomes.append(run.train(run_point))
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
  run_point = getattr(spec.load_module(config_file), 'run_point', None) if config_file else None
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
    for job, group in zip(jobs, pending):
      print(f'submitted {job.job_id}: {label(group)}', flush=True)
    if not wait:
      return None
    for job, group in zip(jobs, pending):
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
    return 'diverged' if (run.workdir / spec.DIVERGED_FILE).exists() else 'done'
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


def main(config, config_flag: str, workdir, *,
         executor: str = 'local', executor_args: str = '', vmap: str = 'off',
         dry_run: bool = False, command: str | None = None) -> list[dict[str, Any]]:
  """`launch.py --sweep`: expand and validate, run what is left, collect, report, analyze.

  `config_flag` is the --config value, 'file.py[:arg]'; `config` the config it gave, with
  any --config.x=y overrides, which every point inherits.
  """
  config_file, config_arg = spec.split_config_argument(config_flag)
  if executor not in EXECUTORS:
    raise SweepError(f'--sweep_executor={executor!r} is not valid; allowed: '
                     f'{", ".join(EXECUTORS)}')
  workdir = Path(workdir)
  module = spec.load_module(config_file)
  runs = spec.expand(config, spec.sweep_points(module, config_arg), workdir)
  run_point = getattr(module, 'run_point', None)
  check_vmap_mode(vmap)
  # Candidate groups; with 'auto' whether they are vmapped is decided where they run.
  group_size = 1 if run_point is not None or vmap == 'off' else VMAP_GROUP_SIZE
  groups = vmapped.group_runs(runs, group_size)
  command = command or 'python ' + ' '.join(sys.argv)
  if dry_run:
    print(describe(runs, groups))
    if any(run.is_finished() for run in runs):  # refresh the report; keep the command that ran
      recorded = workdir / SWEEP_FILE
      recorded = json.loads(recorded.read_text()) if recorded.exists() else {}
      return write_report(module, runs, workdir, recorded.get('command', command), config_flag,
                          recorded.get('wall_s'))
    return []

  spec.check_records(runs)
  workdir.mkdir(parents=True, exist_ok=True)
  metrics.write_json(workdir / SWEEP_FILE, {'command': command, 'config_file': str(config_file),
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
  metrics.write_json(workdir / SWEEP_FILE, {**json.loads((workdir / SWEEP_FILE).read_text()),
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
