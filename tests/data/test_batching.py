"""resnet_jax/data/batching.py: batch plans that depend only on (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_jax.data import batching
from resnet_jax.errors import DatasetError

from tiny_datasets import assert_one_line


def test_epoch_permutation_depends_only_on_seed_and_epoch():
  first = batching.epoch_permutation(seed=3, epoch=2, n=50)

  np.testing.assert_array_equal(first, batching.epoch_permutation(3, 2, 50))
  assert sorted(first.tolist()) == list(range(50)) and first.dtype == np.int32
  assert not np.array_equal(first, batching.epoch_permutation(3, 3, 50))
  assert not np.array_equal(first, batching.epoch_permutation(4, 2, 50))
  first[0] = -1  # Callers get their own copy.
  assert batching.epoch_permutation(3, 2, 50)[0] != -1


def test_train_batches_cover_each_example_once_per_epoch_and_drop_the_remainder():
  n, batch = 103, 10  # 10 steps per epoch; 3 examples left out, different ones each epoch.
  epochs = [np.concatenate([batching.train_batch_indices(7, step, n, batch)
                            for step in range(epoch * 10, epoch * 10 + 10)])
            for epoch in range(2)]

  for seen in epochs:
    assert seen.dtype == np.int32 and len(set(seen.tolist())) == 100
  assert set(range(n)) - set(epochs[0].tolist()) != set(range(n)) - set(epochs[1].tolist())
  np.testing.assert_array_equal(batching.train_batch_indices(7, 13, n, batch),
                                batching.epoch_permutation(7, 1, n)[30:40])


def test_batch_larger_than_the_train_split():
  with pytest.raises(DatasetError) as error:
    batching.train_batch_indices(0, 0, n=5, global_batch=8)
  assert_one_line(error, 'global batch 8 exceeds the 5 training examples')


def test_eval_batches_cover_every_example_and_mask_the_padding():
  batches = list(batching.eval_batches(n=23, global_batch=8))

  assert len(batches) == 3
  indices = np.concatenate([i for i, _ in batches])
  mask = np.concatenate([m for _, m in batches])
  assert indices.dtype == np.int32 and mask.dtype == bool
  assert indices[mask].tolist() == list(range(23))
  assert mask.sum() == 23 and indices[~mask].tolist() == [0]
