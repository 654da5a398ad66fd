"""resnet_jax/data/imagenet.py: the streamed pipeline (tfds mock data: records of random size,
1000 classes) and its per-record transforms.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet_jax.data import batching, imagenet
from resnet_jax.errors import DatasetError

from tiny_datasets import (  # noqa: F401 - fixtures are used by name
    assert_one_line, config, fake_tfds_data_dir,
    isolated_tfds_data_dir, random_images)


@pytest.fixture
def mock_imagenet():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    yield tfds.data_source('imagenet2012', split='train')


def imagenet_config(tmp_path, **overrides):
  data_dir = tmp_path / 'tfds'
  if not data_dir.exists():
    fake_tfds_data_dir(data_dir, 'imagenet2012', '5.1.0')
  return config(tmp_path, name='imagenet2012', image_size=24, path=str(data_dir),
                **overrides)


def take(stream, count):
  return [next(stream) for _ in range(count)]


def stream(cfg, split='train', batch=8, start_step=0, process_index=0, process_count=1):
  return imagenet.imagenet_stream(cfg, split, batch, seed=5, start_step=start_step,
                                  process_index=process_index, process_count=process_count)


def test_imagenet_train_batches_follow_the_seeded_plan(tmp_path, mock_imagenet):
  batches = take(stream(imagenet_config(tmp_path)), 3)

  for step, batch in enumerate(batches):
    assert batch['images'].shape == (8, 24, 24, 3) and batch['images'].dtype == np.uint8
    assert batch['labels'].dtype == np.int32
    expected = [int(mock_imagenet[int(i)]['label'])
                for i in batching.train_batch_indices(5, step, 20, 8)]
    assert batch['labels'].tolist() == expected


def test_imagenet_processes_split_the_same_global_batch(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path)
  whole = take(stream(cfg), 2)
  halves = [take(stream(cfg, process_index=i, process_count=2), 2) for i in range(2)]

  for step in range(2):
    for key in ('images', 'labels'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])


def test_imagenet_resume_replays_the_same_batches(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path)
  uninterrupted = take(stream(cfg), 4)
  resumed = take(stream(cfg, start_step=2), 2)

  for original, replayed in zip(uninterrupted[2:], resumed):
    np.testing.assert_array_equal(original['images'], replayed['images'])
    np.testing.assert_array_equal(original['labels'], replayed['labels'])


def test_imagenet_max_train_examples_streams_a_fixed_subset(tmp_path, mock_imagenet):
  cfg = imagenet_config(tmp_path, max_train_examples=8)
  subset = np.sort(np.random.default_rng(0).choice(20, 8, replace=False))

  (batch,) = take(stream(cfg), 1)

  assert sorted(batch['labels'].tolist()) == sorted(
      int(mock_imagenet[int(i)]['label']) for i in subset)
  assert imagenet.imagenet_split_sizes(cfg) == {'train': 8, 'validation': 20}


def test_imagenet_eval_pads_and_masks_the_last_batch(tmp_path, mock_imagenet):
  halves = [list(stream(imagenet_config(tmp_path), 'validation', batch=8,
                        process_index=i, process_count=2)) for i in range(2)]

  assert [len(h) for h in halves] == [3, 3]
  mask = np.concatenate([np.concatenate([halves[0][b]['mask'], halves[1][b]['mask']])
                         for b in range(3)])
  assert mask.tolist() == [True] * 20 + [False] * 4
  assert all(b['images'].shape == (4, 24, 24, 3) for h in halves for b in h)


def test_imagenet_without_a_prepared_copy(tmp_path):
  with pytest.raises(DatasetError) as error:
    stream(config(tmp_path, name='imagenet2012', path=str(tmp_path)))
  assert_one_line(error, 'no tfds-prepared imagenet2012', '--file_format=array_record',
                  '--config.dataset.path=')


def test_imagenet_stream_rejects_batches_that_do_not_split_over_processes(tmp_path):
  with pytest.raises(DatasetError) as error:
    stream(imagenet_config(tmp_path), batch=10, process_count=4)
  assert_one_line(error, 'global batch 10 does not divide over 4 processes')


def test_random_resized_crop_boxes_stay_inside_the_image_with_bounded_aspect():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = imagenet.random_resized_crop_box(rng, 60, 90)
    assert 0 <= left < right <= 90 and 0 <= top < bottom <= 60
    assert 3 / 4 * 0.9 <= (right - left) / (bottom - top) <= 4 / 3 * 1.1  # after rounding


def test_eval_transform_takes_the_central_224_of_256():
  image = np.zeros((256, 320, 3), np.uint8)
  image[16:240, 48:272] = 255  # The central 224x224 square.

  out = imagenet.eval_transform(image, 224)

  assert out.shape == (224, 224, 3) and out.min() == 255
  assert imagenet.center_crop_box(256, 320, 224 / 256) == (48, 16, 272, 240)


def test_train_transform_is_deterministic_per_rng_and_flips_sometimes():
  image = random_images(1, 0, size=40)[0]
  first = imagenet.train_transform(image, np.random.default_rng(1), 16)

  np.testing.assert_array_equal(first, imagenet.train_transform(image, np.random.default_rng(1), 16))
  assert first.shape == (16, 16, 3) and first.dtype == np.uint8


# ----------------------------------------------------------------------------- recipes


def test_scale_augmentation_crops_from_a_shorter_side_drawn_from_the_range():
  """He et al. 2015 Sec. 3.4: shorter side uniform in [256, 480], then a random 224 crop."""
  rng = np.random.default_rng(0)
  shorter_sides = set()
  for _ in range(3000):
    left, top, right, bottom = imagenet.scale_augment_box(rng, 300, 500, 224, (256, 480))
    assert 0 <= left < right <= 500 and 0 <= top < bottom <= 300
    assert right - left == pytest.approx(bottom - top)  # square: no aspect change
    shorter_sides.add(round(300 * 224 / (right - left)))
  assert min(shorter_sides) == 256 and max(shorter_sides) == 480
  assert len(shorter_sides) > 200  # every integer size is possible


def test_scale_augmentation_reaches_every_part_of_the_resized_image():
  rng = np.random.default_rng(1)
  boxes = np.array([imagenet.scale_augment_box(rng, 300, 300, 224, (256, 256))
                    for _ in range(500)])
  assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == pytest.approx(300)


def test_ten_crop_is_the_centre_and_four_corners_of_the_256_resize_and_their_mirrors():
  """A 256 x 320 image is already 256 on its shorter side, so the crops are exact slices."""
  image = random_images(1, 3, size=320)[0][:256]

  crops = imagenet.ten_crop_transform(image, 224)

  views = [image[16:240, 48:272], image[:224, :224], image[:224, 96:],
           image[32:, :224], image[32:, 96:]]
  assert crops.shape == (10, 224, 224, 3) and crops.dtype == np.uint8
  for index, view in enumerate(views):
    np.testing.assert_array_equal(crops[index], view)
    np.testing.assert_array_equal(crops[index + 5], view[:, ::-1])
  np.testing.assert_array_equal(crops[0], imagenet.eval_transform(image, 224))


def test_imagenet_streams_scale_augmented_train_crops_and_ten_crop_eval(tmp_path,
                                                                        mock_imagenet):
  cfg = imagenet_config(tmp_path)
  recipe = {'train_crop': 'scale', 'scale_range': (24, 40), 'eval_crops': 10}

  train = imagenet.imagenet_stream(cfg, 'train', 8, seed=5, start_step=0, process_index=0,
                                   process_count=1, augment_cfg=recipe)
  evaluation = list(imagenet.imagenet_stream(cfg, 'validation', 8, seed=5, start_step=0,
                                             process_index=0, process_count=1,
                                             augment_cfg=recipe))

  assert next(train)['images'].shape == (8, 24, 24, 3)
  assert [b['images'].shape for b in evaluation] == [(8, 10, 24, 24, 3)] * 3
  assert np.concatenate([b['mask'] for b in evaluation]).sum() == 20
  first = mock_imagenet[0]['image']
  np.testing.assert_array_equal(evaluation[0]['images'][0],
                                imagenet.ten_crop_transform(first, 24))


@pytest.mark.parametrize('recipe, fragment', [
    ({'train_crop': 'inception'}, "augment.train_crop='inception'"),
    ({'eval_crops': 5}, 'augment.eval_crops=5'),
    ({'train_crop': 'scale', 'scale_range': (16, 40)}, 'dataset.image_size=24 <= low <= high')])
def test_imagenet_recipe_options_are_checked_with_one_line(tmp_path, recipe, fragment):
  with pytest.raises(DatasetError) as error:
    imagenet.imagenet_stream(imagenet_config(tmp_path), 'train', 8, seed=0, start_step=0,
                             process_index=0, process_count=1, augment_cfg=recipe)
  assert_one_line(error, fragment)
