"""A run's input: `make_pipeline(config, mesh)`, for device-resident and streamed
datasets alike, with the class count and normalisation statistics the steps need.

Small datasets (CIFAR, SVHN) are placed once on every device as uint8 arrays; a train
batch is then only its example indices, and the gather, augmentation and normalisation
happen inside the jitted step. The indices come from `batching.train_batch_indices`, a
pure function of (seed, step): the data position is the step, so a resumed run reads
exactly the batches an uninterrupted one would, on any number of devices. A pixel_mean
or zca normalisation's fitted arrays sit on the devices beside the images, and
`local_batch` applies it as it gathers.

Large datasets (ImageNet) stream through grain on the host (imagenet.py); each process
feeds its own rows of the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from resnet_jax import parallel
from resnet_jax.data import batching, imagenet, in_memory, preprocessing, registry
from resnet_jax.data.formats import ArraySplit


def make_pipeline(config, mesh) -> InMemoryInput | StreamingInput:
  """The input of a run of `config` over `mesh`: its batches, class count and mean/std."""
  dataset = registry.lookup(config.dataset)
  eval_batch = eval_batch_size(config, mesh)
  if dataset.streamed:
    split_sizes = imagenet.imagenet_split_sizes(config.dataset)
    return StreamingInput(
        config.dataset, mesh, config.seed, config.batch_size, eval_batch,
        num_train=split_sizes['train'], num_test=split_sizes['validation'],
        augment_config=config.augment)
  return InMemoryInput(in_memory.load(config.dataset, seed=config.seed), mesh, config.seed,
                       config.batch_size, eval_batch, config.dataset.normalization)


def eval_batch_size(config, mesh) -> int:
  """The eval batch, rounded up to a multiple of the device count (padding is masked)."""
  return -(-config.eval_batch_size // mesh.size) * mesh.size


def _imagenet_statistics() -> tuple[tuple[float, ...], tuple[float, ...]]:
  """What `dataset.normalization='imagenet'` applies: ImageNet's row's mean and std."""
  imagenet_row = registry.get('imagenet2012')
  return imagenet_row.mean, imagenet_row.std


@dataclasses.dataclass
class InMemoryInput:
  """Train/test (and validation) splits resident on every device; batches are index arrays."""
  dataset: in_memory.InMemoryDataset
  mesh: Any
  seed: int
  batch_size: int
  eval_batch_size: int
  normalization: str = 'dataset'  # dataset.normalization: whose mean/std the steps apply

  def __post_init__(self):
    replicated = parallel.replicated(self.mesh)
    fitted = parallel.put(self.dataset.fitted, replicated)  # one copy, shared by the splits

    def resident(split: ArraySplit) -> dict:
      return {**parallel.put({'images': split.images, 'labels': split.labels}, replicated),
              **fitted}

    self.train_arrays = resident(self.dataset.train)
    self.test_arrays = resident(self.dataset.test)
    self.validation_arrays = None if self.dataset.validation is None else \
        resident(self.dataset.validation)
    self.num_classes = self.dataset.num_classes
    # The per-channel mean/std the steps normalise with; 'imagenet': what torchvision's
    # pretrained weights expect.
    self.mean, self.std = (_imagenet_statistics() if self.normalization == 'imagenet' else
                           (self.dataset.mean, self.dataset.std))

  @property
  def num_train(self) -> int:
    return len(self.dataset.train.labels)

  @property
  def num_test(self) -> int:
    return len(self.dataset.test.labels)

  def train_batch(self, step: int) -> dict:
    indices = batching.train_batch_indices(self.seed, step, self.num_train, self.batch_size)
    return parallel.put({'indices': indices}, parallel.batch_sharded(self.mesh))

  def eval_batches(self, count: int | None = None) -> Iterator[dict]:
    """Index batches over `count` examples (default: the test split), padding masked."""
    sharding = parallel.batch_sharded(self.mesh)
    count = self.num_test if count is None else count
    for indices, mask in batching.eval_batches(count, self.eval_batch_size):
      yield parallel.put({'indices': indices, 'mask': mask}, sharding)

  def eval_splits(self) -> Iterator[tuple[str, dict, Iterator[dict]]]:
    """(metric prefix, arrays, batches): the test split as 'eval', the hold-out as 'val'."""
    yield 'eval', self.test_arrays, self.eval_batches()
    if self.validation_arrays is not None:
      yield 'val', self.validation_arrays, self.eval_batches(
          len(self.dataset.validation.labels))


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
  augment_config: Any = None  # config.augment: train crop, scale range, eval crops

  def __post_init__(self):
    self._train_iter = None
    self._next_step = None
    dataset = registry.lookup(self.dataset_config)
    self.num_classes = in_memory.num_classes(self.dataset_config)
    self.mean, self.std = dataset.mean, dataset.std

  def _stream(self, split: str, batch_size: int, start_step: int):
    import jax
    return imagenet.imagenet_stream(
        self.dataset_config, split, batch_size, seed=self.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
        augment_cfg=self.augment_config)

  def train_batch(self, step: int) -> dict:
    if self._train_iter is None or step != self._next_step:
      self._train_iter = self._stream('train', self.batch_size, step)
    self._next_step = step + 1
    return parallel.put_process_batch(next(self._train_iter), self.mesh)

  def eval_batches(self) -> Iterator[dict]:
    for batch in self._stream('validation', self.eval_batch_size, 0):
      batch.setdefault('mask', np.ones(len(batch['labels']), bool))
      yield parallel.put_process_batch(batch, self.mesh)

  def eval_splits(self) -> Iterator[tuple[str, dict, Iterator[dict]]]:
    """The evaluation split (ImageNet's validation split) is 'eval'; nothing is held out."""
    yield 'eval', self.test_arrays, self.eval_batches()


def local_batch(arrays: dict, batch: dict):
  """Per device: (images, int32 labels) of this device's share of the batch.

  Images are uint8, except under a pixel_mean or zca normalisation (its fitted arrays are
  in `arrays`), which is applied here, before augmentation: float32 network inputs.
  Streamed batches may hold several crops per example: uint8 [N, crops, H, W, C].
  """
  if 'indices' not in batch:
    return batch['images'], batch['labels']
  images = arrays['images'][batch['indices']]
  if any(name in arrays for name in preprocessing.FITTED_ARRAYS):
    images = preprocessing.apply(images, arrays)
  return images, arrays['labels'][batch['indices']]
