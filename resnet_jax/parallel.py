"""Data parallelism over every device of every host: one 1-D mesh with a 'data' axis.

Per-device code is written in the pmap style (local batch, `lax.pmean` over 'data') and
run with `jax.shard_map` inside `jax.jit`, the form JAX recommends now that `pmap` is in
maintenance mode. The same code runs on 1 CPU, 8 simulated CPU devices, 8 GPUs, a TPU
slice, or several hosts after `jax.distributed.initialize()`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax.errors import ConfigError

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run: explicit flags, or auto-detection on SLURM and TPU pods."""
  explicit = coordinator_address is not None
  on_slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  on_tpu_pod = 'TPU_WORKER_HOSTNAMES' in os.environ or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ
  if not (explicit or on_slurm or on_tpu_pod):
    return
  # CPU collectives across processes need gloo; the setting is ignored on GPU and TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all of them, across hosts) named 'data'.

  Axes are Auto, not Explicit (jax.make_mesh's default), so shard_map accepts inputs
  whose sharding was chosen by jit.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put(tree, sharding):
  """Places host values that every process holds in full; each device receives its part."""
  def put_leaf(value):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(put_leaf, tree)


def put_process_batch(local_values, mesh):
  """Assembles a global batch from each process's own rows (streaming input)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)),
                      local_values)


def check_divisible(global_batch: int, what: str, mesh) -> None:
  if global_batch % mesh.size:
    raise ConfigError(f'{what}={global_batch} is not divisible by the {mesh.size} devices; '
                      f'use a multiple of {mesh.size}')
