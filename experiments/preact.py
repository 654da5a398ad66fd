"""Post- vs pre-activation residual units (He et al. 2016, arXiv:1603.05027, Table 2).

The original unit (conv-BN-ReLU-conv-BN, add, ReLU) puts a ReLU on the skip path after
the addition; the full pre-activation unit (BN-ReLU-conv twice, then add) leaves the skip
path a pure identity, so signals propagate directly between any two units (Sec. 3-4).
The gain grows with depth and with the bottleneck design.

Command:   python launch.py --config=experiments/preact.py --sweep \
               --workdir=runs/preact --config.dataset.path=<CIFAR-10>
           seeds: :seeds=3 ; quick: :quick
Sweep:     (ResNet-110 basic, ResNet-164 bottleneck) x (original, pre-activation), both
           with projection shortcuts where the shape changes, the recipe of
           configs/preact_cifar.py (64k iterations, lr 0.1 /10 at 32k and 48k, lr 0.01 for
           the first 400). :cpu is ResNet-56 (basic), original vs pre-activation, seeds 0/1,
           on all 50,000 training images for 2 epochs with configs/resnet_cifar.py:cpu's
           schedule. :quick is depth 20 (basic) and 29 (bottleneck) on 4,096 training
           images for 2 epochs at batch 32 (256 steps). experiments/results/preact holds a
           run of the earlier :quick, which kept the recipe's 400 iterations at lr/10, so
           all 256 of its steps ran at lr 0.005; the current :quick (no warm-up) has not
           been measured.
Expected:  He et al. 2016 Table 2, CIFAR-10 test error, median of 5 runs, pad-crop-flip:
           ResNet-110 original 6.61% (the figure He et al. 2015 give as the mean of 5),
           full pre-activation 6.37%; ResNet-164 original 5.93%, pre-activation 5.46%.
           :quick is a plumbing check; its errors show nothing about the orderings.
Time:      the earlier :quick took 4 min on an idle 2-core CPU; full: 4 runs of 64k
           iterations.
Output:    W/preact.png and the Table 2 layout in W/report.md.
"""

from __future__ import annotations

from experiments import common
from resnet_jax import sweeps
from resnet_jax.sweeps import report

ARCHITECTURES = {'full': ((110, 'basic'), (164, 'bottleneck')),
                 'cpu': ((56, 'basic'),),
                 'quick': ((20, 'basic'), (29, 'bottleneck'))}
CPU_EPOCHS = 2  # on all 50,000 training images
LABELS = {False: 'original', True: 'pre-activation'}


def get_config(arg=None):
  from configs import preact_cifar  # pylint: disable=g-import-not-at-top
  return common.sized(preact_cifar.get_config(), common.options(arg), epochs=CPU_EPOCHS)


def get_sweep(arg=None):
  options = common.options(arg)
  architectures = ARCHITECTURES[common.size(options)]
  return sweeps.product(
      sweeps.zip(sweeps.axis('model.depth', [depth for depth, _ in architectures]),
                sweeps.axis('model.block', [block for _, block in architectures])),
      sweeps.axis('model.preact', [False, True]),
      common.seeds(options))


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  if not runs:
    return ''
  groups = {}
  for run in runs:
    key = (run.overrides['model.depth'], run.overrides['model.block'])
    groups.setdefault(key, {}).setdefault(run.overrides['model.preact'], []).append(run.result)
  architectures = sorted(groups)

  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 3.4))
  for index, preact in enumerate((False, True)):
    offsets = [i + (index - 0.5) * 0.38 for i in range(len(architectures))]
    stats = [report.mean_std(r['test_error'] for r in groups[a].get(preact, []))
             for a in architectures]
    ax.bar(offsets, [100 * m for m, _, _ in stats], width=0.36,
           yerr=[100 * s for _, s, _ in stats], capsize=3, color=f'C{index}',
           label=LABELS[preact])
  ax.set_xticks(range(len(architectures)),
                [f'ResNet-{depth}\n({block})' for depth, block in architectures])
  ax.set_ylabel('final test error (%)')
  ax.set_title('Original vs pre-activation units')
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(workdir / 'preact.png')
  plt.close(fig)

  rows = [[f'ResNet-{depth} ({block})',
           report.format_percent(r['test_error'] for r in groups[(depth, block)].get(False, [])),
           report.format_percent(r['test_error'] for r in groups[(depth, block)].get(True, []))]
          for depth, block in architectures]
  return '\n'.join([
      '## Original vs pre-activation (He et al. 2016, Table 2)', '',
      report.markdown_table(['network', 'original test error %', 'pre-activation test error %'],
                            rows), '', '![original vs pre-activation](preact.png)'])
