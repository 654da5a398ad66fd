"""Batch plans: which examples make up each step, from (seed, step) alone.

Because the plan is a pure function of the seed and the step, any step can be
recomputed on resume, and the order does not depend on how many devices or
processes share the batch.
"""

from collections.abc import Iterator
import functools

import numpy as np

from resnet_jax.errors import DatasetError


@functools.lru_cache(maxsize=4)
def _shared_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  permutation = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
  permutation.setflags(write=False)
  return permutation


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of examples in one epoch: int32 [n], a function of (seed, epoch) only.

  Every process computes the same order, whatever the device or process count.
  """
  return _shared_permutation(seed, epoch, n).copy()


def steps_per_epoch(n: int, global_batch: int) -> int:
  steps = n // global_batch
  if steps < 1:
    raise DatasetError(
        f'global batch {global_batch} exceeds the {n} training examples; lower'
        ' the batch size or raise dataset.max_train_examples')
  return steps


def train_slice(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """Read-only view of the step's indices in the (cached) epoch permutation."""
  epoch, offset = divmod(step, steps_per_epoch(n, global_batch))
  start = offset * global_batch
  return _shared_permutation(seed, epoch, n)[start:start + global_batch]


def train_batch_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """Indices of the examples of training step `step`: int32 [global_batch].

  An epoch is n // global_batch steps; the last n % global_batch examples of
  each epoch's permutation are dropped, so which ones changes with the epoch.
  """
  return train_slice(seed, step, n, global_batch).copy()


def eval_batches(n: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (indices int32 [global_batch], mask bool [global_batch]) covering 0..n-1 once.

  The last batch is padded with index 0 and masked, never dropped, so metrics
  average over exactly the n examples while every batch keeps one shape.
  """
  for start in range(0, n, global_batch):
    positions = np.arange(start, start + global_batch)
    mask = positions < n
    yield np.where(mask, positions, 0).astype(np.int32), mask
