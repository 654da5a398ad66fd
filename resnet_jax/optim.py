"""The optimiser: SGD with (Nesterov) momentum and L2 weight decay, as the papers train.

Weight decay is added to the gradient before momentum (torch's `SGD(weight_decay=...)`,
which is what He et al. and Zagoruyko & Komodakis used), not decoupled as in AdamW.

The values a sweep varies (peak learning rate, weight decay, momentum) live in the
optimiser state through `optax.inject_hyperparams`, so they are inputs of the compiled
train step rather than constants baked into it: one compiled program serves every point,
and runs that differ only in them can be stacked and vmapped. Only the *shape* of the
schedule (boundaries, decay factor, warm-up, total steps) is compiled in, as a multiplier.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def constant_warmup_steps(config) -> int:
  """Steps at constant_warmup_factor x lr; -1 resolves as He et al. 2015 (Sec. 4.2) do:
  400 iterations for 110 layers and deeper, none below."""
  if config.constant_warmup_steps == -1:
    return 400 if config.model.depth >= 110 else 0
  return int(config.constant_warmup_steps)


def lr_multiplier(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The schedule's shape, in [0, 1]: warm-up (constant, linear), then step / cosine /
  constant."""
  shaped = _schedule_shape(config, steps_per_epoch, total_steps)
  constant_steps = constant_warmup_steps(config)
  if not constant_steps:
    return shaped
  factor = float(config.constant_warmup_factor)
  return lambda step: jnp.where(step < constant_steps, factor, 1.0) * shaped(step)


def lr_drop_steps(config, steps_per_epoch: int) -> list[int]:
  """The steps at which the step schedule divides the lr: lr_boundaries_steps, else
  lr_boundaries_epochs x steps per epoch (a boundary of 60 epochs is the first step after
  60 full epochs). Empty for other schedules."""
  if config.lr_schedule != 'step':
    return []
  return list(config.lr_boundaries_steps) or [
      int(round(epoch * steps_per_epoch)) for epoch in config.lr_boundaries_epochs]


def _schedule_shape(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  if config.lr_schedule == 'step':
    main = optax.piecewise_constant_schedule(
        1.0, {boundary: config.lr_decay_factor
              for boundary in lr_drop_steps(config, steps_per_epoch)})
  elif config.lr_schedule == 'cosine':
    cosine = optax.cosine_decay_schedule(1.0, max(total_steps - warmup_steps, 1))
    main = lambda step: cosine(jnp.maximum(step - warmup_steps, 0))
  else:
    main = optax.constant_schedule(1.0)
  if not warmup_steps:
    return main
  return lambda step: jnp.minimum((step + 1) / warmup_steps, 1.0) * main(step)


def _decay_mask(params, decay_bn_and_bias: bool):
  """True where weight decay applies: everywhere, or only on conv/dense kernels."""
  return jax.tree.map(lambda p: decay_bn_and_bias or p.ndim > 1, params)


class MomentumResetState(NamedTuple):
  count: jax.Array  # updates applied so far: the step
  trace: optax.TraceState


def momentum_with_resets(decay, nesterov: bool, reset_steps) -> optax.GradientTransformation:
  """optax.trace whose momentum buffer restarts from zero at `reset_steps`.

  The Wide ResNet authors' code builds a fresh SGD state at every lr drop, which drops
  the momentum buffer (szagoruyko/wide-residual-networks train.lua onStartEpoch: "drop
  learning rate and reset momentum vector"; pytorch/main.py re-creates the optimizer):
  the first update after a drop is the gradient alone, as in Torch's optim.sgd.
  """
  trace = optax.trace(decay=decay, nesterov=nesterov)
  resets = jnp.asarray(sorted(reset_steps) or [-1], jnp.int32)

  def init(params):
    return MomentumResetState(count=jnp.zeros((), jnp.int32), trace=trace.init(params))

  def update(updates, state, params=None):
    restart = jnp.any(state.count == resets)
    buffers = jax.tree.map(lambda t: jnp.where(restart, jnp.zeros_like(t), t), state.trace)
    updates, buffers = trace.update(updates, buffers, params)
    return updates, MomentumResetState(count=state.count + 1, trace=buffers)

  return optax.GradientTransformation(init, update)


def create_optimizer(config, steps_per_epoch: int, total_steps: int,
                     trainable_mask=None) -> optax.GradientTransformation:
  """SGD(lr * multiplier(step)) on grad + weight_decay * param, with optional clipping.

  `trainable_mask` (a pytree of bools like params) freezes the False leaves: their updates
  are zero and they get no weight decay (linear probes).
  """
  multiplier = lr_multiplier(config, steps_per_epoch, total_steps)
  resets = lr_drop_steps(config, steps_per_epoch) if config.reset_momentum_at_lr_drops else None

  def sgd(learning_rate, weight_decay, momentum):
    mask = lambda params: _decay_mask(params, config.decay_bn_and_bias)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm
        else optax.identity(),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.trace(decay=momentum, nesterov=config.nesterov) if resets is None
        else momentum_with_resets(momentum, config.nesterov, resets),
        optax.scale_by_learning_rate(learning_rate),
        optax.scale_by_schedule(multiplier),
    )

  tx = optax.inject_hyperparams(sgd)(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay,
      momentum=config.momentum)
  if trainable_mask is None:
    return tx
  labels = lambda params: jax.tree.map(lambda t: 'train' if t else 'freeze', trainable_mask)
  return optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)


def current_lr(opt_state, multiplier: optax.Schedule, step) -> jax.Array:
  """The learning rate applied at `step`: peak (from the state) times the schedule shape."""
  hyperparams = _inject_state(opt_state).hyperparams
  return hyperparams['learning_rate'] * multiplier(step)


def _inject_state(opt_state):
  if isinstance(opt_state, optax.MultiTransformState):
    return opt_state.inner_states['train'].inner_state
  return opt_state


def hyperparams(opt_state) -> dict[str, float]:
  """The injected hyperparameters (learning_rate, weight_decay, momentum) as numbers."""
  return {name: float(np.asarray(value.addressable_data(0)) if isinstance(value, jax.Array)
                      else value)
          for name, value in _inject_state(opt_state).hyperparams.items()}


def with_hyperparams(opt_state, **values):
  """opt_state with these injected hyperparameters replaced, each placed like the old one."""
  inject = _inject_state(opt_state)
  replaced = {name: jax.device_put(jnp.asarray(values[name], old.dtype), old.sharding)
              if name in values else old for name, old in inject.hyperparams.items()}
  inject = inject._replace(hyperparams=replaced)
  if not isinstance(opt_state, optax.MultiTransformState):
    return inject
  masked = opt_state.inner_states['train']
  return opt_state._replace(inner_states={**opt_state.inner_states,
                                          'train': masked._replace(inner_state=inject)})
