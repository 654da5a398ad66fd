"""Several runs of one architecture trained as one vmapped program (a sweep's fast path).

Runs that differ only in seed, learning_rate, weight_decay or momentum share every shape
and every compiled constant: the peak lr, weight decay and momentum live in the optimiser
state (`optim.py`, `optax.inject_hyperparams`), the seed only in the initial parameters,
the RNG and the data order. So their train states can be stacked on a leading axis and
`train.make_local_train_step` vmapped over it: one compilation, one dispatch per step,
and kernels R times larger, which should keep an accelerator busy where one small CIFAR
net does not. Whether it pays is measured, not assumed (`measure`, and
`python -m resnet_jax.sweep_batched`): on the 2-core CPU this was written on, 4 x ResNet-20
at batch 128 on CIFAR-10 ran at 0.29x and 0.36x the one-by-one speed (two measurements,
124 vs 45 img/s in the second), 4 x ResNet-8 at batch 32 at 0.14x: XLA:CPU runs the
batched (per-run weight) convolutions poorly. So sweeps vmap only on request
(--sweep_vmap=on) or where `auto` times it faster on the machine at hand.

Each run keeps its own parameters, BN statistics, optimiser state, RNG, data order
(`batching.train_batch_indices` with its own seed) and, for synthetic data, its own
dataset. Each writes the same files a separate `train.train_and_evaluate` would:
metrics.jsonl, config.json, checkpoints/ and results.json (plus `vmap_group_size`).
Evaluation runs per run on an unstacked copy, through the same eval step as train.py.

Resume: every run checkpoints into its own workdir, so a group restarts from its
checkpoints when they are all at the same step; otherwise (a run finished, or one was
killed between two saves) the unfinished runs resume one by one through train.py.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoint, metrics, optim, parallel
from resnet_jax.data import batching, in_memory, pipeline, registry
from resnet_jax.model import build_model, model_name
from resnet_jax import sweep, train
from resnet_jax.parallel import DATA_AXIS
from resnet_jax.errors import ConfigError


def _same_dataset(a: in_memory.InMemoryDataset, b: in_memory.InMemoryDataset) -> bool:
  return (a.mean == b.mean and a.std == b.std and
          np.array_equal(a.train.labels, b.train.labels) and
          np.array_equal(a.test.labels, b.test.labels) and
          np.array_equal(a.train.images, b.train.images) and
          np.array_equal(a.test.images, b.test.images))


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _check_group(runs: Sequence[sweep.Run]) -> None:
  keys = {sweep.architecture_key(run.config) for run in runs}
  if len(keys) != 1:
    raise ValueError('a vmapped group must differ only in ' + ', '.join(sweep.VMAPPABLE_KEYS))
  if registry.lookup(runs[0].config.dataset).streamed:
    raise ConfigError(f'vmapped sweeps need an in-memory dataset, not '
                      f'{runs[0].config.dataset.name}; use --sweep_vmap=off')
  if runs[0].config.init_from or runs[0].config.finetune_mode != 'full':
    raise ConfigError('vmapped sweeps train from scratch; use --sweep_vmap=off for fine-tuning')


def train_group(runs: Sequence[sweep.Run]) -> list[dict[str, Any]]:
  """Trains `runs` together; returns each run's results, as train_and_evaluate would."""
  _check_group(runs)
  return _GroupTraining(list(runs)).run()


class _GroupTraining:
  """The loop of `train.train_and_evaluate`, over a stack of runs."""

  def __init__(self, runs: list[sweep.Run]):
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
    self.num_classes = unique[0].num_classes
    self.steps_per_epoch = self.num_train // config.batch_size
    if self.steps_per_epoch < 1:
      raise ConfigError(f'batch_size={config.batch_size} exceeds the {self.num_train} training '
                        'examples; lower batch_size')
    self.total_steps = config.num_train_steps if config.num_train_steps > 0 else \
        int(config.num_epochs * self.steps_per_epoch)
    self.eval_every = max(1, int(round(config.eval_every_epochs * self.steps_per_epoch)))

    self.model = build_model(
        config.model, self.num_classes, half_precision=config.half_precision,
        bn_axis_name=DATA_AXIS if config.sync_batch_stats else None)
    self.multiplier = optim.lr_multiplier(config, self.steps_per_epoch, self.total_steps)
    # Each run's own optimiser, so its state holds its own lr / wd / momentum.
    self.txs = [optim.create_optimizer(run.config, self.steps_per_epoch, self.total_steps)
                for run in runs]
    self.mean_std = [(self.pipelines[i].mean, self.pipelines[i].std) for i in self.dataset_of]

  # --------------------------------------------------------------- compiled pieces

  def _train_step(self):
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

  def _train_arrays(self):
    if len(self.pipelines) == 1:
      return self.pipelines[0].train_arrays
    return jax.jit(_stack, out_shardings=self.replicated)(
        [self.pipelines[i].train_arrays for i in self.dataset_of])

  def _batch(self, step: int) -> dict:
    indices = np.stack([batching.train_batch_indices(run.config.seed, step, self.num_train,
                                                     self.config.batch_size)
                        for run in self.runs])
    return parallel.put({'indices': indices},
                        jax.sharding.NamedSharding(self.mesh, P(None, DATA_AXIS)))

  # --------------------------------------------------------------- the loop

  def _initial_states(self, checkpointers):
    """Fresh or restored per-run states; None when their checkpoints disagree on the step."""
    model_size = self.config.augment.get('resize_to', 0) or self.config.dataset.image_size
    states = [train.create_train_state(self.model, tx, run.config, self.mesh, model_size)
              for tx, run in zip(self.txs, self.runs)]
    restored = [ckpt.restore_latest(train.abstract_state(state, self.mesh))
                for ckpt, state in zip(checkpointers, states)]
    steps = {None if r is None else r[0] for r in restored}
    if len(steps) > 1:
      return None
    if restored[0] is not None:
      states = [r[1] for r in restored]
      print(f'  resuming the group from step {restored[0][0]}', flush=True)
    return states

  def run(self) -> list[dict[str, Any]]:
    config, runs = self.config, self.runs
    checkpointers = [checkpoint.Checkpointer(
        run.workdir / 'checkpoints', max_to_keep=config.keep_checkpoints,
        best_metric=train.best_checkpoint_metric(run.config), best_mode='max') for run in runs]
    states = self._initial_states(checkpointers)
    if states is None:
      for ckpt in checkpointers:
        ckpt.close()
      print('  checkpoints of this group are at different steps; resuming its runs one by '
            'one', flush=True)
      return [sweep.run_single(run) for run in runs]

    writers = [metrics.MetricWriter(run.workdir) for run in runs]
    step = int(jax.device_get(states[0].step))
    for writer, run in zip(writers, runs):
      writer.write_config(run.config)
      if step:
        writer.mark_resumed(step)
    # Saves only states whose measured values are all finite (train.DivergenceGuard).
    guards = [train.DivergenceGuard(ckpt, last_saved=step or None) for ckpt in checkpointers]
    group = len(runs)
    stacked = jax.jit(_stack, out_shardings=self.replicated)(states)
    del states
    unstack = jax.jit(lambda tree, i: jax.tree.map(lambda leaf: leaf[i], tree),
                      out_shardings=self.replicated)
    means = jnp.asarray([m for m, _ in self.mean_std], jnp.float32)
    stds = jnp.asarray([s for _, s in self.mean_std], jnp.float32)
    train_step = self._train_step()
    train_arrays = self._train_arrays()
    eval_steps = [train.make_eval_step(self.model, config, self.mesh, *self.mean_std[i],
                                       self.num_classes) for i in range(len(self.pipelines))]
    eval_step_of = [eval_steps[self.dataset_of[r]] for r in range(group)]
    preemption = train.PreemptionFlag()
    progress = metrics.Progress(self.total_steps, config.batch_size * group, self.steps_per_epoch)

    alive = [True] * group
    start_time = time.time()
    clock = train.TrainClock(config.batch_size)
    pending: list[dict] = []
    train_metrics: list[dict] = [{} for _ in runs]
    eval_metrics: list[dict] = [{} for _ in runs]
    img_per_s = 0.0
    outcomes: list[dict[str, Any] | None] = [None] * group

    def evaluate_run(r):
      state = unstack(stacked, jnp.int32(r))
      pipeline = self.pipelines[self.dataset_of[r]]
      return state, train.evaluate(eval_step_of[r], state, pipeline, self.num_classes)

    def check_finite(measured: dict[int, dict], prefix='train/'):
      for r, values in measured.items():
        bad = train.DivergenceGuard.non_finite(train.with_prefix(prefix, values))
        if alive[r] and bad:
          alive[r] = False
          error = guards[r].diverged(step, bad)
          sweep.record_divergence(runs[r], error)
          print(f'  {runs[r].name}: diverged ({error})', flush=True)
          outcomes[r] = {'diverged': True}

    preemption.arm()
    try:
      while step < self.total_steps and any(alive):
        stacked, step_metrics = train_step(stacked, train_arrays, self._batch(step), means, stds)
        pending.append(step_metrics)
        step += 1
        clock.after_step(step, stacked)
        is_last = step == self.total_steps
        stopping = preemption.agreed() if (jax.process_count() == 1 or
                                           step % config.log_every_steps == 0) else False
        if step % config.log_every_steps == 0 or is_last or stopping:
          per_run = _mean_per_run(pending, group)
          pending = []
          check_finite(dict(enumerate(per_run)))
          img_per_s = clock.interval_img_per_s(step)
          for r in range(group):
            if alive[r]:
              train_metrics[r] = per_run[r]
              writers[r].write(step, {**{f'train/{k}': v for k, v in per_run[r].items()},
                                      'throughput/img_per_s': img_per_s,
                                      'epoch': step / self.steps_per_epoch})
          progress.update(step, loss=float(np.nanmean([m['loss'] for m in per_run])),
                          lr=per_run[0]['lr'], img_per_s=img_per_s * group)
        is_eval = step % self.eval_every == 0 or is_last
        if pending and (is_eval or step % config.checkpoint_every_steps == 0):
          # never save a diverged state
          check_finite(dict(enumerate(_mean_per_run(pending, group))))
        if is_eval:
          with clock.paused(step):
            evaluated = {r: evaluate_run(r) for r in range(group) if alive[r]}
          check_finite({r: measured for r, (_, measured) in evaluated.items()}, prefix='')
          for r, (state, eval_metrics[r]) in evaluated.items():
            if alive[r]:
              writers[r].write(step, {**eval_metrics[r], 'epoch': step / self.steps_per_epoch})
              guards[r].save(step, state, metrics=eval_metrics[r], force=is_last or stopping)
        elif step % config.checkpoint_every_steps == 0 or stopping:
          for r in range(group):
            if alive[r]:
              guards[r].save(step, unstack(stacked, jnp.int32(r)), force=stopping)
        if stopping and not is_last:
          for ckpt in checkpointers:
            ckpt.wait()
          print(f'{preemption.requested or "SIGTERM"}: saved checkpoints at step {step}; rerun '
                'the same command to resume.', flush=True)
          return [{'step': step, 'preempted': True, 'signal': preemption.requested}] * group
    finally:
      preemption.restore()
      progress.close()
      for ckpt in checkpointers:
        ckpt.close()
      for writer in writers:
        writer.close()

    wall_s = time.time() - start_time
    for r, run in enumerate(runs):
      if not alive[r]:
        continue
      if not eval_metrics[r]:  # resumed from the final checkpoint, before results were written
        eval_metrics[r] = evaluate_run(r)[1]
      results = train.final_results(
          run.config, step, eval_metrics[r], train_metrics[r], run.workdir, wall_s, clock)
      results['vmap_group_size'] = group
      run.results_file.write_text(json.dumps(results, indent=2) + '\n')
      print(f'  done: {run.name} | test accuracy {results["test_accuracy"]:.2%} '
            f'(best {results["best_test_accuracy"]:.2%}) | train loss '
            f'{results["train_loss"]:.4f}', flush=True)
      outcomes[r] = results
    print(f'  group of {group}: {metrics.format_duration(wall_s)}, {clock.img_per_s * group:,.0f} '
          f'img/s in all ({clock.img_per_s:,.0f} per run, compile {clock.compile_s:.1f} s)',
          flush=True)
    return outcomes


def _mean_per_run(pending: list[dict], group: int) -> list[dict[str, float]]:
  """Averages the stacked step metrics over the steps since the last log, per run."""
  fetched = jax.device_get(pending)
  return [{key: float(np.mean([m[key][r] for m in fetched])) for key in fetched[0]}
          for r in range(group)]


# ----------------------------------------------------------------------------- measurement


def measure(runs: Sequence[sweep.Run], steps: int = 3, repeats: int = 1) -> dict[str, Any]:
  """Steady-state training throughput of `runs`: one by one vs vmapped.

  Both use the real train steps (train.make_train_step and the group's step) on the runs'
  own data; compilation is excluded, and the two are timed alternately `repeats` times so
  that load from other processes hits both alike. Returns the medians. Nothing is written.
  """
  _check_group(runs)
  config = runs[0].config
  group_size = len(runs)
  training = _GroupTraining(list(runs))
  model_size = config.augment.get('resize_to', 0) or config.dataset.image_size

  def fresh_states():
    return [train.create_train_state(training.model, tx, run.config, training.mesh, model_size)
            for tx, run in zip(training.txs, runs)]

  mean, std = training.mean_std[0]
  single_step = train.make_train_step(train.make_local_train_step(
      training.model, training.txs[0], training.multiplier, config, mean, std,
      training.num_classes), training.mesh)
  group_step = training._train_step()
  arrays = training._train_arrays()
  single_arrays = training.pipelines[0].train_arrays
  means = jnp.asarray([m for m, _ in training.mean_std], jnp.float32)
  stds = jnp.asarray([s for _, s in training.mean_std], jnp.float32)
  sharded = parallel.batch_sharded(training.mesh)

  def one_by_one(states, first_step):
    for r, run in enumerate(runs):
      for step in range(first_step, first_step + steps):
        indices = batching.train_batch_indices(run.config.seed, step, training.num_train,
                                               config.batch_size)
        states[r], _ = single_step(states[r], single_arrays,
                                   parallel.put({'indices': indices}, sharded))
    return jax.block_until_ready(states)

  def together(stacked, first_step):
    for step in range(first_step, first_step + steps):
      stacked, _ = group_step(stacked, arrays, training._batch(step), means, stds)
    return jax.block_until_ready(stacked)

  states = one_by_one(fresh_states(), 0)  # compiles
  stacked = together(jax.jit(_stack, out_shardings=training.replicated)(fresh_states()), 0)
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


def main(argv=None) -> None:
  """python -m resnet_jax.sweep_batched [--data=PATH] [--depth=20] [--group=4] [--steps=10]

  Times `--group` seeds of a CIFAR ResNet trained one by one and vmapped (README, Sweeps).
  """
  import argparse  # pylint: disable=g-import-not-at-top
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=measure.__doc__.splitlines()[0])
  parser.add_argument('--data', default='', help='CIFAR-10 archive or folder; default synthetic')
  parser.add_argument('--depth', type=int, default=20)
  parser.add_argument('--width', type=int, default=1)
  parser.add_argument('--group', type=int, default=4)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  config = config_lib.default_config()
  config.model.depth, config.model.width = args.depth, args.width
  config.batch_size = args.batch
  if args.data:
    config.dataset.path = args.data
  else:
    config.dataset.name, config.dataset.num_classes = 'synthetic', 10
    config.dataset.max_train_examples = 4 * args.batch
  runs = sweep.expand(config, sweep.axis('seed', list(range(args.group))), '/nonexistent')
  result = measure(runs, args.steps, args.repeats)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
