"""A sweep's results as CSVs, a markdown report and paper-style figures.

* `W/results.csv`: one row per configuration (seeds pooled), each error as the papers
  report it: the median, mean ± sample std and min over seeds (He et al. 2016 report the
  median of 5 runs, Zagoruyko & Komodakis the median of 5, He et al. 2015 "best (mean ±
  std)" for ResNet-110), plus params, FLOPs, time and speed.
* `W/runs.csv`: one row per run (its overrides and results.json).
* `W/report.md`: the configuration table, the figures, the command.

Errors are final-epoch errors. The best test error over a run's evaluations is selection
on the test set: it stays in runs.csv under `best_test_error` (test-selected), and is
never a headline; with `dataset.validation_examples` the validation error is reported too.
* `W/final_error.png` (test error against the swept number, log-x where it spans a
  decade; bars when nothing numeric is swept) and `W/curves.png` (training and test error
  against epochs), plus whatever the experiment's own `analyze` draws.

Errors are shown in percent, as in the papers' tables.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from resnet_jax import metrics

SEED_KEY = 'seed'
_STYLE = {'figure.dpi': 110, 'savefig.dpi': 110, 'font.size': 9, 'axes.titlesize': 10,
          'axes.labelsize': 9, 'legend.fontsize': 8, 'axes.grid': True, 'grid.alpha': 0.3,
          'axes.spines.top': False, 'axes.spines.right': False}


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display on clusters), in the report style."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.rcParams.update(_STYLE)
  return plt


# ----------------------------------------------------------------------------- reading


def load_metrics(run_dir) -> list[dict[str, Any]]:
  """The records of `run_dir/metrics.jsonl` on the trajectory that was kept
  (`metrics.read_metrics`: a resumed run logs the steps after its last checkpoint
  again), one per (step, kind) where kind is train or eval."""
  by_key: dict[tuple[int, str], dict] = {}
  for record in metrics.read_metrics(run_dir):
    kind = 'eval' if any(key.startswith('eval/') for key in record) else 'train'
    by_key[(record['step'], kind)] = record
  return [by_key[key] for key in sorted(by_key)]


def curve(records: Sequence[dict], key: str, x: str = 'epoch') -> tuple[np.ndarray, np.ndarray]:
  """(x, value) of every record holding `key` (None, a non-finite value, becomes NaN)."""
  points = [(r.get(x, r['step']), r[key]) for r in records if key in r]
  if not points:
    return np.zeros(0), np.zeros(0)
  xs, ys = zip(*points)
  return np.asarray(xs, float), np.asarray([np.nan if y is None else y for y in ys], float)


# ----------------------------------------------------------------------------- tables


def swept_keys(runs) -> list[str]:
  """The swept config paths in the order they first appear, seeds excluded (pooled)."""
  keys = dict.fromkeys(path for run in runs for path in run.overrides)
  return [key for key in keys if key != SEED_KEY]


def write_csv(path, rows: Sequence[dict]) -> None:
  columns: list[str] = []
  for row in rows:
    columns += [key for key in row if key not in columns]
  with open(path, 'w', newline='', encoding='utf-8') as file:
    writer = csv.DictWriter(file, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({key: _csv_value(row.get(key)) for key in columns})


def _csv_value(value):
  if isinstance(value, (tuple, list)):
    return '-'.join(map(str, value))
  return '' if value is None else value


def _finite(values) -> list[float]:
  return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def seed_statistics(values) -> dict[str, float]:
  """median, mean, sample std, min and count of the finite values (NaN when none)."""
  values = _finite(values)
  if not values:
    return {'median': math.nan, 'mean': math.nan, 'std': math.nan, 'min': math.nan, 'n': 0}
  return {'median': float(np.median(values)), 'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'min': float(np.min(values)), 'n': len(values)}


def mean_std(values) -> tuple[float, float, int]:
  values = _finite(values)
  if not values:
    return math.nan, math.nan, 0
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, \
      len(values)


def format_mean_std(values, scale: float = 1.0, digits: int = 3) -> str:
  """'0.421 ± 0.015' (± the sample std over seeds), or '0.421' for a single value."""
  mean, std, count = mean_std(values)
  if not count:
    return '–'
  text = f'{scale * mean:.{digits}f}'
  return f'{text} ± {scale * std:.{digits}f}' if count > 1 else text


def format_percent(values) -> str:
  """'8.42 ± 0.15' (percent; ± the sample std over seeds) or '8.42' for a single run."""
  return format_mean_std(values, scale=100, digits=2)


def configurations(rows: Sequence[dict], keys: Sequence[str]) -> list[tuple[tuple, list[dict]]]:
  """Rows grouped by their values of `keys` (seeds pooled), in first-seen order."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(_hashable(row.get(key)) for key in keys), []).append(row)
  return list(groups.items())


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


ERROR_KEYS = ('test_error', 'val_error', 'train_error')


def configuration_rows(rows: Sequence[dict], keys: Sequence[str]) -> list[dict[str, Any]]:
  """One record per configuration: its keys, model, size, runs, and the seed statistics
  (median, mean, std, min) of every error; the rows of results.csv."""
  records = []
  for values, group in configurations(rows, keys):
    done = [row for row in group if row.get('status') == 'done']
    first = group[0]
    record = {**dict(zip(keys, values)), 'model': first.get('model', ''),
              'params': first.get('params'), 'flops_per_example': first.get('flops_per_example'),
              'runs': len(group), 'finished': len(done),
              'diverged': sum(row.get('status') == 'diverged' for row in group)}
    for key in ERROR_KEYS:
      if any(row.get(key) is not None for row in done):
        stats = seed_statistics(row.get(key) for row in done)
        record.update({f'{key}_{name}': stats[name] for name in ('median', 'mean', 'std', 'min')})
    record['wall_s_mean'] = mean_std(row.get('wall_s') for row in done)[0]
    record['img_per_s_mean'] = mean_std(row.get('img_per_s') for row in done)[0]
    records.append(record)
  return records


def _percent(value) -> str:
  return '–' if value is None or not math.isfinite(value) else f'{100 * value:.2f}'


def seed_table(rows: Sequence[dict], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
  """report.md's table: per configuration, each error's median, mean ± std and min."""
  records = configuration_rows(rows, keys)
  errors = [key for key in ERROR_KEYS if any(f'{key}_median' in r for r in records)]
  names = {'test_error': 'test', 'val_error': 'val', 'train_error': 'train'}
  headers = [*keys, 'model', 'params', 'GFLOPs', 'runs']
  for key in errors:
    headers += [f'{names[key]} error % median', 'mean ± std', 'min']
  headers += ['time/run', 'img/s']
  table = []
  for record in records:
    runs = f'{record["finished"]}/{record["runs"]}' + (
        f' ({record["diverged"]} diverged)' if record['diverged'] else '')
    row = [*(_cell(record[key]) for key in keys), str(record['model']),
           f'{record["params"]:,}' if record.get('params') else '–',
           f'{record["flops_per_example"] / 1e9:.3f}' if record.get('flops_per_example') else '–',
           runs]
    for key in errors:
      mean, std = record.get(f'{key}_mean'), record.get(f'{key}_std')
      spread = f'{_percent(mean)} ± {_percent(std)}' if record['finished'] > 1 else _percent(mean)
      row += [_percent(record.get(f'{key}_median')), spread, _percent(record.get(f'{key}_min'))]
    wall, speed = record['wall_s_mean'], record['img_per_s_mean']
    row += [metrics.format_duration(wall) if math.isfinite(wall) else '–',
            f'{speed:,.0f}' if math.isfinite(speed) else '–']
    table.append(row)
  return headers, table


def _cell(value) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(map(str, value))
  return str(value)


def markdown_table(headers: Sequence[str], table: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; '|' inside a cell (as in ||F(x)||) is escaped."""
  escape = lambda cell: _cell(cell).replace('|', '\\|')
  lines = ['| ' + ' | '.join(map(escape, headers)) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(map(escape, row)) + ' |' for row in table]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- figures


def short(key: str) -> str:
  return key.rsplit('.', 1)[-1]


def _numeric_axis(rows: Sequence[dict], keys: Sequence[str]) -> str | None:
  """The first swept key whose values are all numbers (not bools), with at least two."""
  for key in keys:
    values = [row.get(key) for row in rows]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and \
        len(set(values)) > 1:
      return key
  return None


def series_label(keys: Sequence[str], values: Sequence[Any]) -> str:
  return ', '.join(f'{short(k)}={_cell(v)}' for k, v in zip(keys, values)) or 'all'


def plot_final_error(path, rows: Sequence[dict], keys: Sequence[str]) -> bool:
  """Final test error (mean ± std over seeds) against the swept number, one line per
  setting of the other keys; a bar per configuration when nothing numeric is swept."""
  done = [row for row in rows if row.get('status') == 'done']
  x_key = _numeric_axis(done, keys)
  if not done:
    return False
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  if x_key is None:
    labels, means, stds = [], [], []
    for values, group in configurations(done, keys):
      mean, std, _ = mean_std(row['test_error'] for row in group)
      labels.append(series_label(keys, values))
      means.append(100 * mean)
      stds.append(100 * std)
    ax.barh(range(len(labels)), means, xerr=stds, color='C0', alpha=0.8, capsize=3)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel('final test error (%)')
  else:
    others = [key for key in keys if key != x_key]
    for index, (values, group) in enumerate(configurations(done, others)):
      xs, means, stds = [], [], []
      for (x,), points in configurations(group, [x_key]):
        mean, std, _ = mean_std(row['test_error'] for row in points)
        xs.append(x)
        means.append(100 * mean)
        stds.append(100 * std)
      order = np.argsort(xs)
      ax.errorbar(np.asarray(xs)[order], np.asarray(means)[order], yerr=np.asarray(stds)[order],
                  marker='o', ms=4, capsize=3, color=f'C{index % 10}',
                  label=series_label(others, values))
    xs = [row[x_key] for row in done]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
      ax.set_xscale('log')
    ax.set_xlabel(short(x_key))
    ax.set_ylabel('final test error (%)')
    if others:
      ax.legend(frameon=False)
  seeds = {row.get(SEED_KEY) for row in done}
  ax.set_title('Final test error' + (f' (mean ± std over {len(seeds)} seeds)'
                                     if len(seeds) > 1 else ''))
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return True


def _mean_curve(curves):
  length = min(len(x) for x, _ in curves)
  return curves[0][0][:length], np.nanmean([y[:length] for _, y in curves], axis=0)


def plot_curves(path, runs, keys: Sequence[str], max_lines: int = 12) -> bool:
  """Training (dashed) and test (solid) error against epochs, one colour per configuration
  (mean over its seeds)."""
  by_config: dict[tuple, dict[str, list]] = {}
  for run in runs:
    values = tuple(_hashable(run.overrides.get(key)) for key in keys)
    records = load_metrics(run.workdir)
    for kind, key in (('train', 'train/accuracy'), ('test', 'eval/accuracy')):
      x, y = curve(records, key)
      if len(x):
        by_config.setdefault(values, {}).setdefault(kind, []).append((x, 1 - y))
  if not by_config:
    return False
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  for index, (values, kinds) in enumerate(list(by_config.items())[:max_lines]):
    color = f'C{index % 10}'
    if 'train' in kinds:
      x, y = _mean_curve(kinds['train'])
      ax.plot(x, 100 * y, '--', lw=1, color=color)
    if 'test' in kinds:
      x, y = _mean_curve(kinds['test'])
      ax.plot(x, 100 * y, '-', lw=1.8, marker='o' if len(x) < 20 else None, ms=4, color=color,
              label=series_label(keys, values))
  ax.set_xlabel('epoch')
  ax.set_ylabel('error (%)')
  ax.set_title('Error during training (dashed: train, solid: test)')
  ax.legend(frameon=False, ncol=2 if len(by_config) > 6 else 1)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------- report


RESULT_COLUMNS = ('model', 'params', 'flops_per_example', 'status', 'step', 'test_error',
                  'val_error', 'train_error', 'best_test_error', 'test_loss', 'train_loss',
                  'wall_s', 'img_per_s')


def write(workdir, rows: Sequence[dict], runs, *, command: str, source: str = '',
          sections: Sequence[str] = (), sweep_wall_s: float | None = None) -> Path:
  """Writes results.csv, runs.csv, the generic figures and report.md; returns the report."""
  workdir = Path(workdir)
  keys = swept_keys(runs)
  write_csv(workdir / 'runs.csv', rows)
  write_csv(workdir / 'results.csv', configuration_rows(rows, keys))
  trained = [row for row in rows if row.get('test_error') is not None or
             row.get('status') == 'diverged']
  lines = [f'# Sweep report: {workdir.name}', '',
           *([f'Sweep of `{source}`, run with:', ''] if source else ['Command:', '']),
           '```', command, '```', '',
           f'{len(rows)} runs, {sum(r.get("status") == "done" for r in rows)} finished'
           + (f'; this invocation took {metrics.format_duration(sweep_wall_s)}'
              if sweep_wall_s is not None else '') + '. Final errors in %, over seeds: median, '
           'mean ± sample std and min (`results.csv`); per-run rows in `runs.csv`.', '']
  if trained:
    headers, table = seed_table(rows, keys)
    lines += [markdown_table(headers, table), '']
    if plot_final_error(workdir / 'final_error.png', rows, keys):
      lines += ['![final test error](final_error.png)', '']
    if plot_curves(workdir / 'curves.png', runs, keys):
      lines += ['![error during training](curves.png)', '']
  lines += [section.strip() + '\n' for section in sections if section and section.strip()]
  path = workdir / 'report.md'
  path.write_text('\n'.join(lines).rstrip() + '\n', encoding='utf-8')
  return path

