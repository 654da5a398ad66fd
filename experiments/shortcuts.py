"""Shortcut options A / B / C / none at one depth (He et al. 2015, Sec. 3.3 and 4.1, Table 3).

A: identity, zero-padding the new channels (no parameters); B: 1x1 projections where the
shape changes, identity elsewhere; C: projections on every block; none: the plain twin.
The paper (ImageNet ResNet-34, Table 3) finds C slightly better than B, and B slightly
better than A, and all three far better than plain: projections are "not essential for addressing the degradation
problem". This runs the same comparison on CIFAR-10.

Command:   python launch.py --config=experiments/shortcuts.py --sweep \
               --workdir=runs/shortcuts --config.dataset.path=<CIFAR-10>
           other depth: :depth=110 ; seeds: :seeds=3 ; quick: :quick
Sweep:     shortcut A/B/C/none at ResNet-56 with the He et al. 2015 CIFAR recipe
           (configs/resnet_cifar.py). :cpu is A/B/C at ResNet-32, seeds 0/1, 4 epochs on a
           fixed 20,000 of the real training images with configs/resnet_cifar.py:cpu's
           schedule.
           :quick is ResNet-20 on 4,096 training images for
           2 epochs at batch 32 (256 steps), one test evaluation at the end.
Expected:  He et al. 2015 Table 3, ImageNet validation top-1 error, 10-crop testing, single
           runs: plain-34 28.54%, ResNet-34 A 25.03%, B 24.52%, C 24.19%. The paper has no
           A/B/C comparison on CIFAR-10 (Table 6: ResNet-56 with option A, 6.97%, a single
           run, per-pixel mean, pad-crop-flip).
           :quick is a plumbing check; its errors show nothing about the options.
Time:      :quick 2.5 min on an idle 2-core CPU; full: 4 runs of 64k iterations.
Output:    W/shortcuts.png (error and parameters per option) and its table in W/report.md.
"""

from __future__ import annotations

from experiments import common
from resnet_jax import sweeps
from resnet_jax.sweeps import report

OPTIONS = ('A', 'B', 'C', 'none')
DEPTHS = {'full': 56, 'cpu': 32, 'quick': 20}
CPU_OPTIONS = ('A', 'B', 'C')  # the plain twin is the degradation experiment's
CPU_EPOCHS, CPU_TRAIN_EXAMPLES = 4, 20_000


def _options(arg):
  return common.options(arg, numbers=('seeds', 'depth'))


def get_config(arg=None):
  options = _options(arg)
  config = common.he2015_cifar()
  config.model.depth = options['depth'] or DEPTHS[common.size(options)]
  return common.sized(config, options, epochs=CPU_EPOCHS, train_examples=CPU_TRAIN_EXAMPLES)


def get_sweep(arg=None):
  options = _options(arg)
  shortcuts = CPU_OPTIONS if options['cpu'] else OPTIONS
  return sweeps.product(sweeps.axis('model.shortcut', shortcuts), common.seeds(options))


def analyze(workdir, runs) -> str:
  runs = common.finished(runs)
  if not runs:
    return ''
  by_option = {}
  for run in runs:
    by_option.setdefault(run.overrides['model.shortcut'], []).append(run)
  present = [option for option in OPTIONS if option in by_option]
  params = {option: _params(by_option[option][0]) for option in present}
  stats = {option: {name: report.mean_std(run.result[name] for run in by_option[option])
                    for name in ('test_error', 'train_error')} for option in present}

  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 3.4))
  for index, name in enumerate(('test_error', 'train_error')):
    offsets = [i + (index - 0.5) * 0.38 for i in range(len(present))]
    ax.bar(offsets, [100 * stats[o][name][0] for o in present], width=0.36,
           yerr=[100 * stats[o][name][1] for o in present], capsize=3, color=f'C{index}',
           label=name.replace('_', ' '))
  labels = [f'{o}\n{params[o] / 1e3:,.0f}k params' if params[o] else o for o in present]
  ax.set_xticks(range(len(present)), labels)
  ax.set_ylabel('final error (%)')
  depth = runs[0].config.model.depth
  ax.set_title(f'Shortcut options at depth {depth}')
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(workdir / 'shortcuts.png')
  plt.close(fig)

  rows = [[option, f'{params[option]:,}' if params[option] else '–', len(by_option[option]),
           report.format_percent(run.result['test_error'] for run in by_option[option]),
           report.format_percent(run.result['train_error'] for run in by_option[option])]
          for option in present]
  return '\n'.join([
      f'## Shortcut options at depth {depth} (He et al. 2015, Table 3)', '',
      report.markdown_table(['shortcut', 'params', 'runs', 'test error %', 'train error %'],
                            rows), '', '![error per shortcut option](shortcuts.png)'])


def _params(run) -> int | None:
  from resnet_jax import summary  # pylint: disable=g-import-not-at-top
  try:
    return summary.summarize(run.config)['params']
  except Exception:  # pylint: disable=broad-except
    return None
