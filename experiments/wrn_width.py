"""Width vs depth: WRN-d-k over a grid (Zagoruyko & Komodakis 2016, Tables 4-5, Fig. 4).

Widening the residual blocks by k (16k/32k/64k channels) buys more accuracy per unit of
training time than adding blocks: WRN-16-8 beats the thin ResNet-1001 and trains several
times faster, because wide convolutions use the GPU well (Sec. 3, "computational
efficiency"). This sweep measures error, parameters and time per epoch over d x k.

Command:   python launch.py --config=experiments/wrn_width.py --sweep \
               --workdir=runs/wrn_width --config.dataset.path=<CIFAR-10>
           seeds: :seeds=3 ; with dropout 0.3: --config.model.dropout_rate=0.3 ; quick: :quick
Sweep:     depth 16/22/28/40 x width 1/2/4/8/10 (20 nets) with the recipe of configs/wrn.py
           (200 epochs, SGD Nesterov, lr 0.1 x0.2 at 60/120/160, wd 5e-4, batch 128).
           :cpu is WRN-16-2 (0.69M params) against WRN-40-1 (0.56M), seeds 0/1, 3 epochs
           on a fixed 20,000 of the real training images with configs/resnet_cifar.py:cpu's
           schedule (and the warm-up of experiments/common.py).
           :quick is depth 10/16 x width 1/2 on 4,096 training images for 2 epochs
           at batch 32 (256 steps).
Expected:  CIFAR-10 test error, no dropout, median of 5 runs, mean/std preprocessing (Table 5):
           WRN-40-4 4.53% (8.9M params), WRN-16-8 4.27% (11.0M), WRN-28-10 4.00% (36.5M);
           Table 4 (ZCA whitening, statistic not stated): WRN-40-1 6.85% (0.6M), WRN-40-2
           5.33% (2.2M), WRN-40-4 4.97%, WRN-16-8 4.81%, WRN-28-10 4.17%. At similar
           parameter counts the wider, shallower nets are as good or better, and faster per
           epoch on a GPU (Sec. 3, Fig. 4).
           :quick is a plumbing check; its errors (near 60%) show nothing about width.
Measured:  :cpu on ../shared/data/cifar10-jpg.tar.gz, AMD EPYC (avx2, avx512f), 2 cores,
           seeds 0/1: WRN-16-2 test error 36.1 ± 0.5% at 306 img/s, WRN-40-1 39.1 ± 1.6% at
           276 img/s (mean ± std; the seeds' ranges do not overlap): the wide, shallow net
           is 3.0 points better and 10% faster per epoch on this CPU, with 23% more
           parameters. Table and figures: experiments/results/wrn_width/.
Time:      :cpu 16 min 27 s on that CPU; :quick 2 min on an idle 2-core CPU; full: 20 runs
           of 200 epochs (WRN-28-10 alone is ~78k steps).
Output:    W/wrn_error_vs_params.png, W/wrn_error_vs_time.png, W/wrn_error_vs_width.png and
           the d x k tables in W/report.md.
"""

from __future__ import annotations

import math

from experiments import common
from resnet_jax import metrics, sweeps
from resnet_jax.sweeps import report

# (depth, k) pairs of the :cpu variant: a wide, shallow net and a thin, deep one of
# similar parameter count (0.69M and 0.56M).
CPU_NETS = ((16, 2), (40, 1))
CPU_EPOCHS, CPU_TRAIN_EXAMPLES = 3, 20_000  # 3 epochs of a fixed 20,000 training images
FULL_DEPTHS = (16, 22, 28, 40)
FULL_WIDTHS = (1, 2, 4, 8, 10)
QUICK_DEPTHS = (10, 16)
QUICK_WIDTHS = (1, 2)


def get_config(arg=None):
  from configs import wrn  # pylint: disable=g-import-not-at-top
  return common.sized(wrn.get_config(), common.options(arg), epochs=CPU_EPOCHS,
                      train_examples=CPU_TRAIN_EXAMPLES)


def get_sweep(arg=None):
  options = common.options(arg)
  if options['cpu']:
    return sweeps.product(sweeps.zip(sweeps.axis('model.depth', [d for d, _ in CPU_NETS]),
                                   sweeps.axis('model.width', [k for _, k in CPU_NETS])),
                         common.seeds(options))
  quick = options['quick']
  return sweeps.product(sweeps.axis('model.depth', QUICK_DEPTHS if quick else FULL_DEPTHS),
                       sweeps.axis('model.width', QUICK_WIDTHS if quick else FULL_WIDTHS),
                       common.seeds(options))


CIFAR_EPOCH = 50_000  # images in one epoch of the full CIFAR-10 training split


def epoch_seconds(run) -> float:
  """Time for one full CIFAR-10 epoch at the run's measured training throughput
  (compilation and evaluation excluded), so quick runs on a subset compare too."""
  speed = run.result.get('img_per_s') or math.nan
  return CIFAR_EPOCH / speed if speed else math.nan


def _table(runs):
  from resnet_jax import summary  # pylint: disable=g-import-not-at-top
  cells = {}
  for run in runs:
    key = (run.overrides['model.depth'], run.overrides['model.width'])
    cells.setdefault(key, []).append(run)
  rows = []
  for (depth, width), group in sorted(cells.items()):
    rows.append(dict(depth=depth, width=width, params=summary.summarize(group[0].config)['params'],
                     error=report.mean_std(r.result['test_error'] for r in group),
                     epoch_s=report.mean_std(epoch_seconds(r) for r in group)[0]))
  return rows


def _plot(path, rows, x_key: str, x_label: str, log_x: bool) -> None:
  plt = common.pyplot()
  colors = common.depth_colors([row['depth'] for row in rows])
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  for depth in sorted({row['depth'] for row in rows}):
    line = sorted((row for row in rows if row['depth'] == depth), key=lambda r: r[x_key])
    xs = [row[x_key] for row in line]
    ax.errorbar(xs, [100 * row['error'][0] for row in line],
                [100 * row['error'][1] for row in line], marker='o', ms=4, capsize=3,
                color=colors[depth], label=f'WRN-{depth}-k')
    if x_key != 'width':
      for row in line:
        ax.annotate(f'k={row["width"]}', (row[x_key], 100 * row['error'][0]),
                    textcoords='offset points', xytext=(4, 3), fontsize=7, color=colors[depth])
  if log_x:
    ax.set_xscale('log')
  if x_key == 'width':
    widths = sorted({row['width'] for row in rows})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
  ax.set_xlabel(x_label)
  ax.set_ylabel('final test error (%)')
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  if not runs:
    return ''
  rows = _table(runs)
  _plot(workdir / 'wrn_error_vs_params.png', rows, 'params', 'parameters', log_x=True)
  _plot(workdir / 'wrn_error_vs_time.png', rows, 'epoch_s', 'training time per 50k-image epoch (s)',
        log_x=True)
  _plot(workdir / 'wrn_error_vs_width.png', rows, 'width', 'width factor k', log_x=True)
  depths = sorted({row['depth'] for row in rows})
  widths = sorted({row['width'] for row in rows})
  lookup = {(row['depth'], row['width']): row for row in rows}

  def grid(cell):
    return [[f'WRN-{d}'] + [cell(lookup[(d, k)]) if (d, k) in lookup else '–' for k in widths]
            for d in depths]

  headers = ['depth \\ k'] + [str(k) for k in widths]
  error = lambda row: (f'{100 * row["error"][0]:.2f}' +
                       (f' ± {100 * row["error"][1]:.2f}' if row['error'][2] > 1 else ''))
  return '\n'.join([
      '## Width vs depth (Zagoruyko & Komodakis 2016, Tables 4-5, Fig. 4)', '',
      'Final test error (%):', '', report.markdown_table(headers, grid(error)), '',
      'Parameters (millions):', '',
      report.markdown_table(headers, grid(lambda row: f'{row["params"] / 1e6:.2f}')), '',
      'Training time per 50,000-image epoch at the measured throughput on this machine:', '',
      report.markdown_table(headers, grid(lambda row: metrics.format_duration(row['epoch_s']))),
      '', '![error against parameters](wrn_error_vs_params.png)', '',
      '![error against time per epoch](wrn_error_vs_time.png)', '',
      '![error against width](wrn_error_vs_width.png)'])
