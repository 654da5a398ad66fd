"""Batches for the train and eval steps, for device-resident and streamed datasets.

Small datasets (CIFAR, SVHN) are placed once on every device as uint8 arrays; a train
batch is then only its example indices, and the gather, augmentation and normalisation
happen inside the jitted step. The indices come from `datasets.train_batch_indices`, a
pure function of (seed, step): the data position is the step, so a resumed run reads
exactly the batches an uninterrupted one would, on any number of devices.

Large datasets (ImageNet) stream through grain on the host; each process feeds its own
rows of the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from resnet_jax import datasets, parallel


@dataclasses.dataclass
class InMemoryInput:
  """Train/test splits resident on every device; batches are index arrays."""
  dataset: datasets.InMemoryDataset
  mesh: Any
  seed: int
  batch_size: int
  eval_batch_size: int

  def __post_init__(self):
    replicated = parallel.replicated(self.mesh)
    self.train_arrays = parallel.put(
        {'images': self.dataset.train.images, 'labels': self.dataset.train.labels}, replicated)
    self.test_arrays = parallel.put(
        {'images': self.dataset.test.images, 'labels': self.dataset.test.labels}, replicated)

  @property
  def num_train(self) -> int:
    return len(self.dataset.train.labels)

  @property
  def num_test(self) -> int:
    return len(self.dataset.test.labels)

  def train_batch(self, step: int) -> dict:
    indices = datasets.train_batch_indices(self.seed, step, self.num_train, self.batch_size)
    return parallel.put({'indices': indices}, parallel.batch_sharded(self.mesh))

  def eval_batches(self) -> Iterator[dict]:
    sharding = parallel.batch_sharded(self.mesh)
    for indices, mask in datasets.eval_batches(self.num_test, self.eval_batch_size):
      yield parallel.put({'indices': indices, 'mask': mask}, sharding)


@dataclasses.dataclass
class StreamingInput:
  """Host-decoded batches (grain), each process contributing its rows of the global batch."""
  dataset_config: Any
  mesh: Any
  seed: int
  batch_size: int
  eval_batch_size: int
  num_train: int
  num_test: int
  train_arrays: dict = dataclasses.field(default_factory=dict)
  test_arrays: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._train_iter = None
    self._next_step = None

  def _stream(self, split: str, batch_size: int, start_step: int):
    import jax
    return datasets.imagenet_stream(
        self.dataset_config, split, batch_size, seed=self.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  def train_batch(self, step: int) -> dict:
    if self._train_iter is None or step != self._next_step:
      self._train_iter = self._stream('train', self.batch_size, step)
    self._next_step = step + 1
    return parallel.put_process_batch(next(self._train_iter), self.mesh)

  def eval_batches(self) -> Iterator[dict]:
    for batch in self._stream('validation', self.eval_batch_size, 0):
      batch.setdefault('mask', np.ones(len(batch['labels']), bool))
      yield parallel.put_process_batch(batch, self.mesh)


def local_batch(arrays: dict, batch: dict):
  """Per device: (uint8 images, int32 labels) of this device's share of the batch."""
  if 'indices' in batch:
    return arrays['images'][batch['indices']], arrays['labels'][batch['indices']]
  return batch['images'], batch['labels']
