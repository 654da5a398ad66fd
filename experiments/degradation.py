"""The degradation problem: plain vs residual nets as depth grows (He et al. 2015, Sec. 4.2).

Plain nets (shortcut 'none', the same layers without skips) get *higher training* error as
they get deeper, which overfitting cannot explain; their residual twins (option A, no
extra parameters) get lower error with depth. Fig. 6 of arXiv:1512.03385.

Command:   python launch.py --config=experiments/degradation.py --sweep \
               --workdir=runs/degradation --config.dataset.path=<CIFAR-10>
           quick:  --config=experiments/degradation.py:quick
           seeds:  --config=experiments/degradation.py:seeds=3  (mean ± std over seeds)
Sweep:     depth 20/32/44/56/110 x shortcut none/A; the He et al. 2015 recipe
           (configs/resnet_cifar.py: 64k iterations, lr 0.1 /10 at 32k and 48k, batch 128).
           :cpu is depth 20/56 x shortcut none/A x seeds 0/1, 3 epochs on a fixed 20,000
           of the real training images (configs/resnet_cifar.py:cpu's schedule: cosine,
           Nesterov, wd 5e-4, a linear warm-up over the first 150 steps), the whole test
           split evaluated after each epoch.
           :quick is depth 8/20/32 on 4,096 training images for 2 epochs at batch 32
           (256 steps, lr 0.05, cosine), one test evaluation at the end (all 10,000 images).
Expected:  Fig. 6 (curves, no table): plain-56 above plain-20 in training and test error
           throughout training; the ResNets the other way round. Table 6, CIFAR-10 test
           error, per-pixel mean, pad-crop-flip, single runs except ResNet-110: ResNet-20
           8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43% (best of 5; mean ± std 6.61 ±
           0.16).
           :quick is a plumbing check: at 256 steps on 4,096 images the deeper nets of both
           kinds have the higher error (measured before this variant was named so), which
           says nothing about the paper's claims.
Measured:  :cpu on ../shared/data/cifar10-jpg.tar.gz, AMD EPYC (avx2, avx512f), 2 cores,
           seeds 0/1, mean ± std of final training error (augmented batches) / test error:
           plain-20 49.0 ± 2.8 / 47.5 ± 0.6, plain-56 72.5 ± 3.6 / 70.7 ± 4.5;
           ResNet-20 37.2 ± 1.8 / 35.6 ± 0.2, ResNet-56 42.0 ± 1.1 / 39.6 ± 0.7. The plain
           nets degrade (+23.6 points of training error from 20 to 56 layers); the residual
           twins degrade 5x less but still do (+4.8) at this budget (468 steps), so
           "ResNet-56 at or below ResNet-20" is not shown here. Table and figures:
           experiments/results/degradation/.
Time:      :cpu 33 min 32 s on that CPU; :quick 3 min (10 min under load); full: 10 runs
           of 64k iterations, on one GPU about 10-40 min each.
Output:    W/degradation_curves.png (Fig. 6: training and test error against iterations,
           plain left, ResNet right), W/degradation_final.png (error against depth), and
           the final-error table in W/report.md.
"""

from __future__ import annotations

import numpy as np

from experiments import common
from resnet_jax.sweeps import report

DEPTHS = {'full': (20, 32, 44, 56, 110), 'cpu': (20, 56), 'quick': (8, 20, 32)}
CPU_EPOCHS, CPU_TRAIN_EXAMPLES = 3, 20_000
SHORTCUTS = ('none', 'A')
LABELS = {'none': 'plain', 'A': 'ResNet'}
TITLES = {'none': 'plain nets', 'A': 'residual nets (option A)'}


def get_config(arg=None):
  return common.sized(common.he2015_cifar(), common.options(arg), epochs=CPU_EPOCHS,
                      train_examples=CPU_TRAIN_EXAMPLES, evaluations=3)


def get_sweep(arg=None):
  return common.shortcut_depth_sweep(common.options(arg), SHORTCUTS, DEPTHS)


def _curves(runs, shortcut: str, depth: int, key: str):
  """Mean over seeds of error = 1 - accuracy against iterations."""
  curves = []
  for run in runs:
    if run.overrides['model.shortcut'] == shortcut and run.overrides['model.depth'] == depth:
      steps, accuracy = report.curve(report.load_metrics(run.workdir), key, x='step')
      if len(steps):
        curves.append((steps, 1 - accuracy))
  if not curves:
    return np.zeros(0), np.zeros(0)
  length = min(len(steps) for steps, _ in curves)
  return curves[0][0][:length], np.nanmean([error[:length] for _, error in curves], axis=0)


def plot_curves(path, runs, depths) -> None:
  """Fig. 6: thin dashed training error, bold test error, plain left and ResNet right."""
  plt = common.pyplot()
  colors = common.depth_colors(depths)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, shortcut in zip(axes, SHORTCUTS):
    for depth in depths:
      steps, train_error = _curves(runs, shortcut, depth, 'train/accuracy')
      ax.plot(steps, 100 * train_error, '--', lw=1, color=colors[depth])
      steps, test_error = _curves(runs, shortcut, depth, 'eval/accuracy')
      ax.plot(steps, 100 * test_error, '-', lw=2, marker='o', ms=4, color=colors[depth],
              label=f'{LABELS[shortcut]}-{depth}')
    ax.set_title(TITLES[shortcut])
    ax.set_xlabel('iterations')
    ax.legend(frameon=False, title='dashed: train, bold: test')
  axes[0].set_ylabel('error (%)')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def final_errors(runs) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
  """(shortcut, depth) -> {'train_error' | 'test_error': (mean, std, n) over seeds}."""
  table = {}
  for run in runs:
    key = (run.overrides['model.shortcut'], run.overrides['model.depth'])
    table.setdefault(key, []).append(run.result)
  return {key: {name: report.mean_std(r[name] for r in results)
                for name in ('train_error', 'test_error')}
          for key, results in table.items()}


def plot_final(path, errors, depths) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  for index, shortcut in enumerate(SHORTCUTS):
    for name, style in (('test_error', '-o'), ('train_error', '--s')):
      points = [(d, errors[(shortcut, d)][name]) for d in depths if (shortcut, d) in errors]
      if not points:
        continue
      xs = [d for d, _ in points]
      ax.errorbar(xs, [100 * m for _, (m, _, _) in points], [100 * s for _, (_, s, _) in points],
                  fmt=style, ms=4, capsize=3, color=f'C{index}',
                  label=f'{LABELS[shortcut]}, {name.split("_")[0]}')
  ax.set_xscale('log')
  ax.set_xticks(depths, [str(d) for d in depths])
  ax.minorticks_off()
  ax.set_xlabel('depth (layers)')
  ax.set_ylabel('final error (%)')
  ax.set_title('Degradation: error against depth')
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  if not runs:
    return ''
  depths = sorted({run.overrides['model.depth'] for run in runs})
  plot_curves(workdir / 'degradation_curves.png', runs, depths)
  errors = final_errors(runs)
  plot_final(workdir / 'degradation_final.png', errors, depths)

  def cell(key, name):
    if key not in errors:
      return '–'
    mean, std, count = errors[key][name]
    return f'{100 * mean:.2f}' + (f' ± {100 * std:.2f}' if count > 1 else '')

  headers = ['depth', 'plain train', 'plain test', 'ResNet train', 'ResNet test']
  rows = [[d, cell(('none', d), 'train_error'), cell(('none', d), 'test_error'),
           cell(('A', d), 'train_error'), cell(('A', d), 'test_error')] for d in depths]
  return '\n'.join([
      '## Degradation (He et al. 2015, Fig. 6)', '',
      'Final error (%) of plain nets and their residual twins. Training error is the mean '
      'over the last logging window, on augmented batches, as in the paper.', '',
      report.markdown_table(headers, rows), '',
      '![training and test error against iterations](degradation_curves.png)', '',
      '![final error against depth](degradation_final.png)'])
