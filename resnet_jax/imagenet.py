"""ImageNet, streamed: tfds array_record -> grain, with per-record transforms in numpy/Pillow.

The stream follows the same seeded batch plan as the in-memory datasets
(resnet_jax.batching), so resuming at a step replays exactly the batches a run
without interruption would have seen, whatever the process count.
"""

from collections.abc import Iterator
import dataclasses
import os

import numpy as np
from PIL import Image

from resnet_jax import batching, data_sources, dataset_config
from resnet_jax.dataset_types import DatasetError

_IMAGENET_SPLITS = {'train': 'train', 'validation': 'validation',
                    'test': 'validation', 'eval': 'validation'}
_EVAL_CROP_FRACTION = 224 / 256  # resize to 256, centre-crop 224 (He et al. 2015)
# The stream has no end for training: the train loop decides when to stop.
_UNBOUNDED_STEPS = 2**40
# The customary ImageNet RGB statistics in [0, 1] (as in torchvision and the Flax
# example), used instead of a pass over 1.28M JPEGs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """Inception-style crop box (left, top, right, bottom) (Szegedy et al. 2015).

  Area uniform in area_range of the image, aspect ratio log-uniform in
  aspect_range; after `attempts` misses, the central square.
  """
  area = height * width
  for _ in range(attempts):
    target_area = area * rng.uniform(*area_range)
    aspect = np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1])))
    crop_w = int(round(np.sqrt(target_area * aspect)))
    crop_h = int(round(np.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return left, top, left + crop_w, top + crop_h
  return center_crop_box(height, width, 1.0)


def center_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
  """Central square whose side is `fraction` of the shorter image side."""
  side = max(1, int(round(min(height, width) * fraction)))
  top, left = (height - side) // 2, (width - side) // 2
  return left, top, left + side, top + side


def _resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops `box` and resizes it to size x size in one Pillow call (bilinear, antialiased)."""
  pixels = np.asarray(image, np.uint8)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:  # Grayscale stored with a channel axis.
    pixels = pixels[..., 0]
  rgb = Image.fromarray(pixels).convert('RGB')
  return np.asarray(rgb.resize((size, size), Image.BILINEAR, box=box), np.uint8)


def train_transform(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Random-resized crop to size x size, then a horizontal flip with probability 1/2."""
  out = _resize_box(image, random_resized_crop_box(rng, *image.shape[:2]), size)
  return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """Central crop of 224/256 of the short side, resized to size x size."""
  return _resize_box(image, center_crop_box(*image.shape[:2], _EVAL_CROP_FRACTION), size)


@dataclasses.dataclass(frozen=True)
class _TrainRecord:
  """Maps a position in this process's stream to a transformed example.

  Position p is slot p % per_process of step p // per_process; the global slot
  picks the example from train_batch_indices and seeds its augmentation, so
  the global batch is the same for any process count and any resume step.
  """
  source: object
  example_ids: np.ndarray | None  # subset of the source, or None for all
  seed: int
  global_batch: int
  per_process: int
  process_index: int
  image_size: int

  def __call__(self, position: int) -> dict:
    step, local_slot = divmod(position, self.per_process)
    slot = self.process_index * self.per_process + local_slot
    n = len(self.source) if self.example_ids is None else len(self.example_ids)
    index = int(batching.train_slice(self.seed, step, n, self.global_batch)[slot])
    if self.example_ids is not None:
      index = int(self.example_ids[index])
    record = self.source[index]
    rng = np.random.default_rng([self.seed, step, slot])
    return {'images': train_transform(record['image'], rng, self.image_size),
            'labels': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class _EvalRecord:
  """Maps a position in this process's eval stream to an example, padded and masked."""
  source: object
  global_batch: int
  per_process: int
  process_index: int
  image_size: int

  def __call__(self, position: int) -> dict:
    batch, local_slot = divmod(position, self.per_process)
    global_position = (batch * self.global_batch
                       + self.process_index * self.per_process + local_slot)
    valid = global_position < len(self.source)
    record = self.source[global_position if valid else 0]
    return {'images': eval_transform(record['image'], self.image_size),
            'labels': np.int32(record['label']), 'mask': np.bool_(valid)}


def imagenet_stream(dataset_cfg, split: str, global_batch: int, *, seed: int,
                    start_step: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
  """This process's share of each global batch, from a tfds-prepared ImageNet.

  Yields {'images': uint8 [global_batch // process_count, S, S, 3],
  'labels': int32 [...]} (plus bool 'mask' for eval, where the last batch is
  padded with example 0). Train batches follow train_batch_indices(seed, step)
  and run forever from `start_step`; eval batches follow eval_batches and
  start at batch `start_step` (normally 0). Records are read and transformed
  by grain worker threads (Pillow releases the GIL while resizing).
  """
  import grain  # pylint: disable=g-import-not-at-top

  name = dataset_config.dataset_name(dataset_cfg)
  if name not in dataset_config.STREAMED:
    raise DatasetError(f'{name} is held in memory; use load_in_memory, not imagenet_stream')
  if split not in _IMAGENET_SPLITS:
    raise DatasetError(f'unknown split {split!r}; use one of {sorted(_IMAGENET_SPLITS)}')
  if global_batch % process_count:
    raise DatasetError(
        f'global batch {global_batch} does not divide over {process_count}'
        ' processes; use a multiple of the process count')
  per_process = global_batch // process_count
  image_size = dataset_config.image_size(dataset_cfg, name)
  source = _streamed_source(dataset_cfg, name, _IMAGENET_SPLITS[split])
  if split == 'train':
    example_ids = dataset_config.train_subset(
        len(source), int(dataset_cfg.get('max_train_examples', -1)), name)
    num_train = len(source) if example_ids is None else len(example_ids)
    batching.steps_per_epoch(num_train, global_batch)  # Fails here, not in a worker thread.
    transform = _TrainRecord(source, example_ids, seed, global_batch, per_process,
                             process_index, image_size)
    stop_step = _UNBOUNDED_STEPS
  else:
    transform = _EvalRecord(source, global_batch, per_process, process_index, image_size)
    stop_step = -(-len(source) // global_batch)
  positions = grain.MapDataset.range(start_step * per_process, stop_step * per_process)
  threads = min(16, 2 * len(os.sched_getaffinity(0)))
  records = positions.map(transform).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * per_process))
  return iter(records.batch(per_process, drop_remainder=True))


def imagenet_split_sizes(dataset_cfg) -> dict[str, int]:
  """Examples per epoch: {'train': after any max_train_examples subset, 'validation': all}."""
  name = dataset_config.dataset_name(dataset_cfg)
  num_train = len(_streamed_source(dataset_cfg, name, 'train'))
  max_train = int(dataset_cfg.get('max_train_examples', -1))
  if dataset_config.train_subset(num_train, max_train, name) is not None:
    num_train = max_train
  return {'train': num_train,
          'validation': len(_streamed_source(dataset_cfg, name, 'validation'))}


def _streamed_source(dataset_cfg, name: str, split: str):
  """The array_record data source of a tfds-prepared copy (dataset.path or tfds's default).

  Never downloads: preparing ImageNet needs its manual tarballs, and tfds's
  preparation of Image features needs TensorFlow.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = dataset_config.configured_path(dataset_cfg) or data_sources.default_tfds_data_dir()
  fix = (f'prepare it with `tfds build {name} --file_format=array_record` (on a machine'
         f' with TensorFlow) and pass --config.dataset.path=<that tfds data_dir>')
  if not data_sources.is_tfds_data_dir(data_dir, name):
    raise DatasetError(f'no tfds-prepared {name} under {data_dir}; {fix}')
  try:
    return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
  except Exception as err:  # noqa: BLE001 - tfds raises many types.
    first_line = str(err).strip().split('\n', 1)[0]
    raise DatasetError(
        f'cannot open the {split} split of {name} under {data_dir}'
        f' ({type(err).__name__}: {first_line}); {fix}') from err
