"""Which examples a run trains on, holds out and batches: all from seeds alone.

The batch plan is a pure function of the seed and the step, so any step can be
recomputed on resume, and the order does not depend on how many devices or
processes share the batch. The max_train_examples subset and the validation hold-out
are drawn once from fixed and run seeds.
"""

from collections.abc import Iterator
import functools

import numpy as np

from resnet_jax.errors import DatasetError

# Fixed seed of the max_train_examples subset: the subset must not move when
# the training seed changes, so runs with different seeds see the same data.
_SUBSET_SEED = 0
# Mixed with config.seed to draw the validation hold-out, so that its RNG stream is not
# the one the batch plan draws from ([seed, epoch]).
_VALIDATION_STREAM = 0x76616C  # 'val'


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


# ----------------------------------------------------------------------------- subsets


def train_subset(num_train: int, max_train_examples: int, name: str,
                 held_out: int = 0) -> np.ndarray | None:
  """Sorted indices of a fixed random subset, or None to keep every example.

  `held_out`: validation examples already taken from the split (only for the message).
  """
  if max_train_examples == -1:
    return None
  if not 1 <= max_train_examples <= num_train:
    what = (f'the {num_train + held_out} examples of the {name} train split less the'
            f' {held_out} of dataset.validation_examples') if held_out else \
        f'the size of the {name} train split'
    raise DatasetError(
        f'dataset.max_train_examples={max_train_examples} is outside 1..{num_train}'
        f' ({what}); use -1 for all examples')
  rng = np.random.default_rng(_SUBSET_SEED)
  return np.sort(rng.choice(num_train, size=max_train_examples, replace=False))


def validation_split(labels: np.ndarray, num_classes: int, validation_examples: int,
                     seed: int, name: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(train indices, validation indices), both sorted, or None when nothing is held out.

  Class-balanced: validation_examples / num_classes examples of every class, drawn by
  `seed`, so a run's validation set is fixed by its seed and never trained on. He et al.
  2015 (Sec. 4.2) chose their CIFAR-10 schedule on such a 45k/5k split
  (dataset.validation_examples=5000).
  """
  if validation_examples == 0:
    return None
  per_class, remainder = divmod(validation_examples, num_classes)
  if validation_examples < 0 or remainder or per_class == 0:
    raise DatasetError(
        f'dataset.validation_examples={validation_examples} is not valid: use 0 (none) or a'
        f' positive multiple of the {num_classes} classes of {name}, so every class is'
        ' held out equally')
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() <= per_class:
    raise DatasetError(
        f'dataset.validation_examples={validation_examples} is too large: {name} has only'
        f' {counts.min()} training examples of its rarest class and {per_class} per class'
        ' would be held out; use fewer')
  rng = np.random.default_rng([_VALIDATION_STREAM, seed])
  held_out = np.concatenate([
      rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
      for label in range(num_classes)])
  is_validation = np.zeros(len(labels), bool)
  is_validation[held_out] = True
  return np.flatnonzero(~is_validation), np.flatnonzero(is_validation)
