"""Several runs of one architecture trained as one vmapped program (a sweep's fast path).

Runs that differ only in seed, learning_rate, weight_decay or momentum share every shape
and every compiled constant: the peak lr, weight decay and momentum live in the optimiser
state (`optim.py`, `optax.inject_hyperparams`), the seed only in the initial parameters,
the RNG and the data order. So their train states can be stacked on a leading axis and
`train.make_local_train_step` vmapped over it: one compilation, one dispatch per step,
and kernels R times larger, which should keep an accelerator busy where one small CIFAR
net does not. Whether it pays is measured, not assumed (`measure`, and
`python benchmarks/vmap_sweep.py`): on the 2-core CPU this was written on, 4 x ResNet-20
at batch 128 on CIFAR-10 ran at 0.29x and 0.36x the one-by-one speed (two measurements,
124 vs 45 img/s in the second), 4 x ResNet-8 at batch 32 at 0.14x: XLA:CPU runs the
batched (per-run weight) convolutions poorly. So sweeps vmap only on request
(--sweep_vmap=on) or where `auto` times it faster on the machine at hand.

Each run keeps its own parameters, BN statistics, optimiser state, RNG, data order
(`batching.train_batch_indices` with its own seed) and, for synthetic data, its own
dataset. Each writes the same files a separate `train.train_and_evaluate` would:
metrics.jsonl, config.json, checkpoints/ and results.json (plus `vmap_group_size`).
The group is set up, trained and checked by the engine's own pieces (train.py:
Schedule, make_model, make_optimizer, restore_or_initialise, run_loop, DivergenceGuard,
evaluate, final_results); only the stacking is written here. A run whose values stop
being finite is recorded as diverged and leaves the group; the others go on.

Resume: every run checkpoints into its own workdir, so a group restarts from its
checkpoints when they are all at the same step; otherwise (a run finished, or one was
killed between two saves) they resume one by one (spec.Run.train).
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from resnet_jax import metrics, parallel, train
from resnet_jax.data import batching, in_memory, pipeline, registry
from resnet_jax.errors import ConfigError, TrainingDiverged
from resnet_jax.model import model_name
from resnet_jax.parallel import DATA_AXIS
from resnet_jax.sweeps.spec import Run

# Hyperparameters that live in the optimiser state (optim.py) or only pick the seed:
# runs that differ only in these share one compiled train step and can be vmapped.
VMAPPABLE_KEYS = ('seed', 'learning_rate', 'weight_decay', 'momentum')


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


def _same_dataset(a: in_memory.InMemoryDataset, b: in_memory.InMemoryDataset) -> bool:
  return (a.mean == b.mean and a.std == b.std and
          np.array_equal(a.train.labels, b.train.labels) and
          np.array_equal(a.test.labels, b.test.labels) and
          np.array_equal(a.train.images, b.train.images) and
          np.array_equal(a.test.images, b.test.images))


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _check_group(runs: Sequence[Run]) -> None:
  keys = {architecture_key(run.config) for run in runs}
  if len(keys) != 1:
    raise ValueError('a vmapped group must differ only in ' + ', '.join(VMAPPABLE_KEYS))
  if registry.lookup(runs[0].config.dataset).streamed:
    raise ConfigError(f'vmapped sweeps need an in-memory dataset, not '
                      f'{runs[0].config.dataset.name}; use --sweep_vmap=off')
  if runs[0].config.init_from or runs[0].config.finetune_mode != 'full':
    raise ConfigError('vmapped sweeps train from scratch; use --sweep_vmap=off for fine-tuning')


def train_group(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """Trains `runs` together; returns each run's results, as train_and_evaluate would."""
  _check_group(runs)
  return _Group(list(runs)).run()


class _Group:
  """A stack of runs, set up as train_and_evaluate sets up one, and driven by its loop
  (`train.run_loop`) through the trainee methods below."""

  def __init__(self, runs: list[Run]):
    self.runs = runs
    self.config = config = runs[0].config
    self.mesh = mesh = parallel.data_mesh()
    parallel.check_divisible(config.batch_size, 'batch_size', mesh)
    self.replicated = parallel.replicated(mesh)

    # Data: one copy when every run sees the same data (real datasets ignore the seed).
    loaded = [in_memory.load(run.config.dataset, seed=run.config.seed) for run in runs]
    self.dataset_of = []
    unique: list[in_memory.InMemoryDataset] = []
    for dataset in loaded:
      match = next((i for i, d in enumerate(unique) if _same_dataset(d, dataset)), None)
      if match is None:
        unique.append(dataset)
        match = len(unique) - 1
      self.dataset_of.append(match)
    eval_batch = pipeline.eval_batch_size(config, mesh)
    self.pipelines = [pipeline.InMemoryInput(d, mesh, config.seed, config.batch_size, eval_batch,
                                             config.dataset.normalization) for d in unique]
    self.num_train = self.pipelines[0].num_train
    self.num_classes = self.pipelines[0].num_classes
    self.schedule = train.Schedule.of(config, self.num_train)
    self.model = train.make_model(config, self.num_classes)
    # Each run's own optimiser, so its state holds its own lr / wd / momentum.
    optimizers = [train.make_optimizer(run.config, self.schedule) for run in runs]
    self.txs = [tx for tx, _ in optimizers]
    self.multiplier = optimizers[0][1]
    self.means = jnp.asarray([self.pipelines[i].mean for i in self.dataset_of], jnp.float32)
    self.stds = jnp.asarray([self.pipelines[i].std for i in self.dataset_of], jnp.float32)

  # --------------------------------------------------------------- compiled pieces

  def compiled_step(self):
    """jit(shard_map(vmap(local step))): stacked states, per-run indices, one program."""
    shared_data = len(self.pipelines) == 1

    def per_run(state, arrays, batch, mean, std):
      local_step = train.make_local_train_step(self.model, self.txs[0], self.multiplier,
                                               self.config, mean, std, self.num_classes)
      return local_step(state, arrays, batch)

    batched = jax.vmap(per_run, in_axes=(0, None if shared_data else 0, 0, 0, 0))
    sharded = jax.shard_map(batched, mesh=self.mesh,
                            in_specs=(P(), P(), P(None, DATA_AXIS), P(), P()),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)

  def stacked_arrays(self):
    if len(self.pipelines) == 1:
      return self.pipelines[0].train_arrays
    return jax.jit(_stack, out_shardings=self.replicated)(
        [self.pipelines[i].train_arrays for i in self.dataset_of])

  def batch(self, step: int) -> dict:
    indices = np.stack([batching.train_batch_indices(run.config.seed, step, self.num_train,
                                                     self.config.batch_size)
                        for run in self.runs])
    return parallel.put({'indices': indices},
                        jax.sharding.NamedSharding(self.mesh, P(None, DATA_AXIS)))

  def fresh_states(self) -> list[train.TrainState]:
    return [train.create_train_state(self.model, tx, run.config, self.mesh,
                                     train.input_size(self.config))
            for tx, run in zip(self.txs, self.runs)]

  # --------------------------------------------------------------- the run

  def run(self) -> list[dict[str, Any]]:
    config, runs, schedule = self.config, self.runs, self.schedule
    changes = [train.check_config_record(run.config, run.workdir) for run in runs]
    self.checkpointers = [train.open_checkpointer(run.config, run.workdir) for run in runs]
    restored = [train.restore_or_initialise(ckpt, state, run.config, self.mesh, run.workdir,
                                            schedule.steps_per_epoch)
                for ckpt, state, run in zip(self.checkpointers, self.fresh_states(), runs)]
    if len({step for _, step in restored}) > 1:
      for ckpt in self.checkpointers:
        ckpt.close()
      print('  checkpoints of this group are at different steps; resuming its runs one by '
            'one', flush=True)
      return [run.train() for run in runs]
    restored_step = restored[0][1]
    if restored_step is not None:
      print(f'  resuming the group from step {restored_step}', flush=True)
    step = restored_step or 0

    self.writers = [metrics.MetricWriter(run.workdir) for run in runs]
    for writer, run, change in zip(self.writers, runs, changes):
      train.start_record(writer, run.workdir, run.config, step, change,
                         resumed=restored_step is not None)
    self.guards = [train.DivergenceGuard(ckpt, restored_step) for ckpt in self.checkpointers]
    group = len(runs)
    self.stacked = jax.jit(_stack, out_shardings=self.replicated)([s for s, _ in restored])
    del restored
    self.unstack = jax.jit(lambda tree, i: jax.tree.map(lambda leaf: leaf[i], tree),
                           out_shardings=self.replicated)
    self.step_fn, self.train_arrays = self.compiled_step(), self.stacked_arrays()
    eval_steps = [train.make_eval_step(self.model, config, self.mesh, p.mean, p.std,
                                       self.num_classes) for p in self.pipelines]
    self.eval_step_of = [eval_steps[self.dataset_of[r]] for r in range(group)]
    self.progress = metrics.Progress(schedule.total_steps, config.batch_size * group,
                                     schedule.steps_per_epoch)
    self.alive = [True] * group
    self.outcomes: list[dict[str, Any] | None] = [None] * group
    self.train_metrics: list[dict] = [{} for _ in runs]
    self.eval_metrics: list[dict] = [{} for _ in runs]
    preemption = train.PreemptionFlag()
    clock = train.TrainClock(config.batch_size)
    start_time = time.time()
    preemption.arm()
    try:
      step, stopped = train.run_loop(self, schedule, step, preemption, clock)
      if stopped:
        for ckpt in self.checkpointers:
          ckpt.wait()
        print(f'{preemption.requested or "SIGTERM"}: saved checkpoints at step {step}; rerun '
              'the same command to resume.', flush=True)
        return [{'step': step, 'preempted': True, 'signal': preemption.requested}] * group
    finally:
      preemption.restore()
      self.progress.close()
      for ckpt in self.checkpointers:
        ckpt.close()
      for writer in self.writers:
        writer.close()

    wall_s = time.time() - start_time
    for r, run in enumerate(runs):
      if not self.alive[r]:
        continue
      if not self.eval_metrics[r]:  # resumed from the final checkpoint, before results were written
        self.eval_metrics[r] = self._evaluate_run(r)[1]
      results = train.final_results(run.config, step, self.eval_metrics[r],
                                    self.train_metrics[r], run.workdir, wall_s, clock)
      results['vmap_group_size'] = group
      metrics.write_json(run.results_file, results)
      print('  ' + train.done_line(results, schedule.total_steps, run.workdir), flush=True)
      self.outcomes[r] = results
    print(f'  group of {group}: {metrics.format_duration(wall_s)}, {clock.img_per_s * group:,.0f} '
          f'img/s in all ({clock.img_per_s:,.0f} per run, compile {clock.compile_s:.1f} s)',
          flush=True)
    return self.outcomes

  # --------------------------------------------------------------- what train.run_loop calls

  def active(self) -> bool:
    return any(self.alive)

  def train_step(self, step: int):
    self.stacked, step_metrics = self.step_fn(self.stacked, self.train_arrays, self.batch(step),
                                              self.means, self.stds)
    return step_metrics

  def log(self, step: int, pending: list[dict], img_per_s: float) -> None:
    per_run = _mean_per_run(pending, len(self.runs))
    self._check(step, {r: train.with_prefix('train/', values) for r, values in
                       enumerate(per_run)})
    for r, values in enumerate(per_run):
      if self.alive[r]:
        self.train_metrics[r] = values
        self.writers[r].write(step, {**train.with_prefix('train/', values),
                                     'throughput/img_per_s': img_per_s,
                                     'epoch': step / self.schedule.steps_per_epoch})
    self.progress.update(step, loss=float(np.nanmean([m['loss'] for m in per_run])),
                         lr=per_run[0]['lr'], img_per_s=img_per_s * len(self.runs))

  def check(self, step: int, pending: list[dict]) -> None:
    self._check(step, {r: train.with_prefix('train/', values) for r, values in
                       enumerate(_mean_per_run(pending, len(self.runs)))})

  def evaluate(self, step: int, should_stop) -> dict | None:
    evaluated = {}
    for r in range(len(self.runs)):
      if self.alive[r]:
        state, measured = self._evaluate_run(r, should_stop)
        if measured is None:
          return None
        evaluated[r] = (state, measured)
    self._check(step, {r: measured for r, (_, measured) in evaluated.items()})
    for r, (_, measured) in evaluated.items():
      if self.alive[r]:
        self.eval_metrics[r] = measured
        self.writers[r].write(step, {**measured, 'epoch': step / self.schedule.steps_per_epoch})
    return evaluated

  def save(self, step: int, evaluated: dict | None, force: bool) -> None:
    for r, guard in enumerate(self.guards):
      if not self.alive[r]:
        continue
      if evaluated and r in evaluated:
        state, measured = evaluated[r]
        guard.save(step, state, metrics=measured, force=force)
      else:
        guard.save(step, self.unstack(self.stacked, jnp.int32(r)), force=force)

  def _evaluate_run(self, r: int, should_stop=None):
    """(run r's unstacked state, its evaluation, or None when a signal stopped it)."""
    state = self.unstack(self.stacked, jnp.int32(r))
    pipeline_of_run = self.pipelines[self.dataset_of[r]]
    return state, train.evaluate(self.eval_step_of[r], state, pipeline_of_run,
                                 self.num_classes, should_stop)

  def _check(self, step: int, measured: dict[int, dict]) -> None:
    """Each run's DivergenceGuard; a run that diverged is recorded and leaves the group."""
    for r, values in measured.items():
      if not self.alive[r]:
        continue
      try:
        self.guards[r].check(step, values)
      except TrainingDiverged as error:
        self.alive[r] = False
        self.runs[r].record_divergence(error)
        print(f'  {self.runs[r].name}: diverged ({error})', flush=True)
        self.outcomes[r] = {'diverged': True}


def _mean_per_run(pending: list[dict], group: int) -> list[dict[str, float]]:
  """Averages the stacked step metrics over the steps since the last log, per run."""
  fetched = jax.device_get(pending)
  return [{key: float(np.mean([m[key][r] for m in fetched])) for key in fetched[0]}
          for r in range(group)]


# ----------------------------------------------------------------------------- measurement


def measure(runs: Sequence[Run], steps: int = 3, repeats: int = 1) -> dict[str, Any]:
  """Steady-state training throughput of `runs`: one by one vs vmapped.

  Both use the real train steps (train.make_train_step and the group's step) on the runs'
  own data; compilation is excluded, and the two are timed alternately `repeats` times so
  that load from other processes hits both alike. Returns the medians. Nothing is written.
  """
  _check_group(runs)
  config = runs[0].config
  group_size = len(runs)
  group = _Group(list(runs))
  first = group.pipelines[0]
  single_step = train.make_train_step(train.make_local_train_step(
      group.model, group.txs[0], group.multiplier, config, first.mean, first.std,
      group.num_classes), group.mesh)
  group_step = group.compiled_step()
  arrays = group.stacked_arrays()
  sharded = parallel.batch_sharded(group.mesh)

  def one_by_one(states, first_step):
    for r, run in enumerate(runs):
      for step in range(first_step, first_step + steps):
        indices = batching.train_batch_indices(run.config.seed, step, group.num_train,
                                               config.batch_size)
        states[r], _ = single_step(states[r], first.train_arrays,
                                   parallel.put({'indices': indices}, sharded))
    return jax.block_until_ready(states)

  def together(stacked, first_step):
    for step in range(first_step, first_step + steps):
      stacked, _ = group_step(stacked, arrays, group.batch(step), group.means, group.stds)
    return jax.block_until_ready(stacked)

  states = one_by_one(group.fresh_states(), 0)  # compiles
  stacked = together(jax.jit(_stack, out_shardings=group.replicated)(group.fresh_states()), 0)
  separate_s, vmapped_s = [], []
  for repeat in range(repeats):
    start = time.perf_counter()
    states = one_by_one(states, (repeat + 1) * steps)
    separate_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    stacked = together(stacked, (repeat + 1) * steps)
    vmapped_s.append(time.perf_counter() - start)
  images = group_size * steps * config.batch_size
  separate = images / float(np.median(separate_s))
  vmapped = images / float(np.median(vmapped_s))
  return {'backend': jax.default_backend(), 'devices': jax.device_count(),
          'group_size': group_size, 'batch_size': config.batch_size,
          'model': model_name(config.model), 'separate_img_per_s': separate,
          'vmapped_img_per_s': vmapped, 'speedup': vmapped / separate}
