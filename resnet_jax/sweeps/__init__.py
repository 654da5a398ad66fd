"""Sweeps: many runs of one config file, each a point of its `get_sweep(arg)`.

  spec.py     points from axes (axis, product, zip), their names, expansion into runs
  execute.py  launch.py --sweep: runs the points here or as submitit jobs, then reports
  vmapped.py  runs that differ only in seed, lr, wd or momentum, trained as one program
  report.py   results.csv, report.md and the figures

The spec helpers below are what a config file's get_sweep uses:
`sweeps.product(sweeps.axis('model.depth', [20, 56]), sweeps.axis('seed', [0, 1]))`.
"""

from resnet_jax.sweeps.spec import Point, axis, product, zip  # pylint: disable=redefined-builtin
