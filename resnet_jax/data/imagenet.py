"""ImageNet, streamed: tfds array_record -> grain, with per-record transforms in numpy/Pillow.

The stream follows the same seeded batch plan as the in-memory datasets
(batching.py), so resuming at a step replays exactly the batches a run
without interruption would have seen, whatever the process count.

Training crops (`augment.train_crop`): 'random_resized', the Inception-style crop of
torchvision's reference recipe and fb.resnet.torch (datasets/imagenet.lua
RandomSizedCrop), or 'scale', He et al. 2015's scale augmentation (Sec. 3.4); then a
flip. Evaluation (`augment.eval_crops`): the centre 224 of the image resized to 256,
or ten crops (its four corners and centre, and their mirror images), whose logits the
eval step averages. AlexNet's PCA colour noise (`augment.pca_noise`) is added on the
device (augment.pca_lighting).
"""

from collections.abc import Iterator
import dataclasses
import os

import numpy as np
from PIL import Image

from resnet_jax.data import batching, registry, sources
from resnet_jax.errors import DatasetError

_SPLITS = ('train', 'validation', 'test', 'eval')  # the last three: the evaluation split
_EVAL_CROP_FRACTION = 224 / 256  # resize to 256, centre-crop 224 (He et al. 2015)
TRAIN_CROPS = ('random_resized', 'scale')
EVAL_CROPS = (1, 10)
# The stream has no end for training: the train loop decides when to stop.
_UNBOUNDED_STEPS = 2**40


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


def scale_augment_box(rng: np.random.Generator, height: int, width: int, size: int,
                      scale_range=(256, 480)) -> tuple[float, float, float, float]:
  """He et al. 2015 (Sec. 3.4) scale augmentation, as a crop box (left, top, right, bottom).

  "The image is resized with its shorter side randomly sampled in [256, 480] ... A
  224x224 crop is randomly sampled": the shorter side s is uniform over the integers of
  `scale_range` (fb.resnet.torch transforms.lua RandomScale draws the same way), the
  crop's offset uniform over the resized image. Returned in the original image's
  coordinates, so one resize of the box gives the crop.
  """
  target = int(rng.integers(scale_range[0], scale_range[1] + 1))
  factor = target / min(height, width)
  # Whole pixels of the resized image, never past the original's border.
  resized_h, resized_w = (max(size, int(side * factor + 1e-6)) for side in (height, width))
  top = int(rng.integers(0, resized_h - size + 1))
  left = int(rng.integers(0, resized_w - size + 1))
  return (left / factor, top / factor, min(width, (left + size) / factor),
          min(height, (top + size) / factor))


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


def train_transform(image: np.ndarray, rng: np.random.Generator, size: int,
                    crop: str = 'random_resized', scale_range=(256, 480)) -> np.ndarray:
  """A size x size training crop ('random_resized' or 'scale'), then a flip with p = 1/2."""
  if crop == 'scale':
    box = scale_augment_box(rng, *image.shape[:2], size, scale_range)
  else:
    box = random_resized_crop_box(rng, *image.shape[:2])
  out = _resize_box(image, box, size)
  return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """Central crop of 224/256 of the short side, resized to size x size."""
  return _resize_box(image, center_crop_box(*image.shape[:2], _EVAL_CROP_FRACTION), size)


def ten_crop_transform(image: np.ndarray, size: int) -> np.ndarray:
  """The standard 10-crop test views, uint8 [10, size, size, 3].

  Of the image resized to size / (224/256) on its shorter side (256 for 224): the
  centre crop (eval_transform's), the four corner crops, then the mirror image of each
  (fb.resnet.torch transforms.lua TenCrop; He et al. 2015 Table 3 reports 10-crop).
  """
  height, width = image.shape[:2]
  left, top, right, bottom = center_crop_box(height, width, _EVAL_CROP_FRACTION)
  side = right - left
  boxes = [(left, top, right, bottom), (0, 0, side, side), (width - side, 0, width, side),
           (0, height - side, side, height), (width - side, height - side, width, height)]
  views = np.stack([_resize_box(image, box, size) for box in boxes])
  return np.concatenate([views, views[:, :, ::-1]])


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
  crop: str = 'random_resized'
  scale_range: tuple[int, int] = (256, 480)

  def __call__(self, position: int) -> dict:
    step, local_slot = divmod(position, self.per_process)
    slot = self.process_index * self.per_process + local_slot
    n = len(self.source) if self.example_ids is None else len(self.example_ids)
    index = int(batching.train_slice(self.seed, step, n, self.global_batch)[slot])
    if self.example_ids is not None:
      index = int(self.example_ids[index])
    record = self.source[index]
    rng = np.random.default_rng([self.seed, step, slot])
    return {'images': train_transform(record['image'], rng, self.image_size, self.crop,
                                      self.scale_range),
            'labels': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class _EvalRecord:
  """Maps a position in this process's eval stream to an example, padded and masked."""
  source: object
  global_batch: int
  per_process: int
  process_index: int
  image_size: int
  crops: int = 1

  def __call__(self, position: int) -> dict:
    batch, local_slot = divmod(position, self.per_process)
    global_position = (batch * self.global_batch
                       + self.process_index * self.per_process + local_slot)
    valid = global_position < len(self.source)
    record = self.source[global_position if valid else 0]
    transform = ten_crop_transform if self.crops == 10 else eval_transform
    return {'images': transform(record['image'], self.image_size),
            'labels': np.int32(record['label']), 'mask': np.bool_(valid)}


def imagenet_stream(dataset_cfg, split: str, global_batch: int, *, seed: int,
                    start_step: int, process_index: int, process_count: int,
                    augment_cfg=None) -> Iterator[dict]:
  """This process's share of each global batch, from a tfds-prepared ImageNet.

  Yields {'images': uint8 [global_batch // process_count, S, S, 3],
  'labels': int32 [...]} (plus bool 'mask' for eval, where the last batch is
  padded with example 0; with augment.eval_crops=10 eval images are
  [..., 10, S, S, 3]). `augment_cfg` (config.augment) picks the train crop and the
  eval crops; None keeps the defaults. Train batches follow train_batch_indices(seed, step)
  and run forever from `start_step`; eval batches follow eval_batches and
  start at batch `start_step` (normally 0). Records are read and transformed
  by grain worker threads (Pillow releases the GIL while resizing).
  """
  import grain  # pylint: disable=g-import-not-at-top

  dataset = registry.lookup(dataset_cfg)
  name = dataset.name
  if not dataset.streamed:
    raise DatasetError(f'{name} is held in memory; use load_in_memory, not imagenet_stream')
  if split not in _SPLITS:
    raise DatasetError(f'unknown split {split!r}; use one of {sorted(_SPLITS)}')
  if global_batch % process_count:
    raise DatasetError(
        f'global batch {global_batch} does not divide over {process_count}'
        ' processes; use a multiple of the process count')
  per_process = global_batch // process_count
  image_size = registry.image_size(dataset_cfg)
  crop, scale_range, crops = _stream_augment(augment_cfg or {}, image_size)
  train_split, eval_split = dataset.splits
  source = _streamed_source(dataset_cfg, train_split if split == 'train' else eval_split)
  if split == 'train':
    example_ids = batching.train_subset(
        len(source), int(dataset_cfg.get('max_train_examples', -1)), name)
    num_train = len(source) if example_ids is None else len(example_ids)
    batching.steps_per_epoch(num_train, global_batch)  # Fails here, not in a worker thread.
    transform = _TrainRecord(source, example_ids, seed, global_batch, per_process,
                             process_index, image_size, crop, scale_range)
    stop_step = _UNBOUNDED_STEPS
  else:
    transform = _EvalRecord(source, global_batch, per_process, process_index, image_size,
                            crops)
    stop_step = -(-len(source) // global_batch)
  positions = grain.MapDataset.range(start_step * per_process, stop_step * per_process)
  threads = min(16, 2 * len(os.sched_getaffinity(0)))
  records = positions.map(transform).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * per_process))
  return iter(records.batch(per_process, drop_remainder=True))


def _stream_augment(augment_cfg, image_size: int) -> tuple[str, tuple[int, int], int]:
  """(train_crop, scale_range, eval_crops) from config.augment, checked."""
  crop = augment_cfg.get('train_crop', 'random_resized')
  scale_range = tuple(int(s) for s in augment_cfg.get('scale_range', (256, 480)))
  crops = int(augment_cfg.get('eval_crops', 1))
  if crop not in TRAIN_CROPS:
    raise DatasetError(f'augment.train_crop={crop!r} is not valid; allowed: {TRAIN_CROPS}')
  if crops not in EVAL_CROPS:
    raise DatasetError(f'augment.eval_crops={crops} is not valid; allowed: {EVAL_CROPS}')
  if crop == 'scale' and (len(scale_range) != 2 or
                          not image_size <= scale_range[0] <= scale_range[1]):
    raise DatasetError(
        f'augment.scale_range={scale_range} is not valid: use (low, high) with'
        f' dataset.image_size={image_size} <= low <= high, e.g. (256, 480)')
  return crop, scale_range, crops


def imagenet_split_sizes(dataset_cfg) -> dict[str, int]:
  """Examples per epoch: {'train': after any max_train_examples subset, 'validation': all}."""
  name = registry.lookup(dataset_cfg).name
  train_split, eval_split = registry.lookup(dataset_cfg).splits
  num_train = len(_streamed_source(dataset_cfg, train_split))
  max_train = int(dataset_cfg.get('max_train_examples', -1))
  if batching.train_subset(num_train, max_train, name) is not None:
    num_train = max_train
  return {'train': num_train, 'validation': len(_streamed_source(dataset_cfg, eval_split))}


def _streamed_source(dataset_cfg, split: str):
  """The array_record data source of a tfds-prepared copy (dataset.path or tfds's default).

  Never downloads: preparing ImageNet needs its manual tarballs, and tfds's
  preparation of Image features needs TensorFlow.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = registry.lookup(dataset_cfg).tfds_name
  data_dir = sources.configured_path(dataset_cfg) or sources.default_tfds_data_dir()
  fix = (f'prepare it with `tfds build {name} --file_format=array_record` (on a machine'
         f' with TensorFlow) and pass --config.dataset.path=<that tfds data_dir>')
  if not sources.is_tfds_data_dir(data_dir, name):
    raise DatasetError(f'no tfds-prepared {name} under {data_dir}; {fix}')
  try:
    return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
  except Exception as err:  # noqa: BLE001 - tfds raises many types.
    first_line = str(err).strip().split('\n', 1)[0]
    raise DatasetError(
        f'cannot open the {split} split of {name} under {data_dir}'
        f' ({type(err).__name__}: {first_line}); {fix}') from err
