"""resnet_jax/data/augment.py: pad-crop-flip, cutout and normalisation, checked pixel by pixel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import augment


def random_images(count: int = 64, size: int = 8, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(1, 256, (count, size, size, 3), np.uint8)


def translate_offset(original: np.ndarray, crop: np.ndarray, padding: int):
  """(dy, dx) such that crop is the window at (dy, dx) of the zero-padded original, else None."""
  height, width, _ = original.shape
  padded = np.pad(original, ((padding, padding), (padding, padding), (0, 0)))
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      if np.array_equal(padded[dy:dy + height, dx:dx + width], crop):
        return dy, dx
  return None


def test_random_crop_is_a_translate_of_the_zero_padded_image():
  images = random_images()

  out = np.asarray(augment.random_crop_flip(jax.random.key(0), images, padding=4, flip=False))

  assert out.shape == images.shape and out.dtype == np.uint8
  offsets = [translate_offset(image, crop, 4) for image, crop in zip(images, out)]
  assert None not in offsets
  assert len(set(offsets)) > 20  # Offsets are drawn per example, over the 9x9 choices.


def test_flip_mirrors_about_half_of_the_examples_and_leaves_the_rest():
  images = random_images()

  out = np.asarray(augment.random_crop_flip(jax.random.key(1), images, padding=0, flip=True))

  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  unchanged = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(m or u for m, u in zip(mirrored, unchanged))
  assert 16 < sum(mirrored) < 48


def test_crop_and_flip_together_give_a_translate_of_the_image_or_its_mirror():
  images = random_images()

  out = np.asarray(augment.random_crop_flip(jax.random.key(2), images))

  for image, crop in zip(images, out):
    assert (translate_offset(image, crop, 4) is not None
            or translate_offset(image[:, ::-1], crop, 4) is not None)


def test_random_crop_flip_is_deterministic_per_key():
  images = random_images()

  first = augment.random_crop_flip(jax.random.key(3), images)

  np.testing.assert_array_equal(first, augment.random_crop_flip(jax.random.key(3), images))
  assert not np.array_equal(first, augment.random_crop_flip(jax.random.key(4), images))


@pytest.mark.parametrize('size', [3, 4])
def test_cutout_zeroes_exactly_one_border_clipped_square_per_example(size):
  images = np.ones((256, 8, 8, 3), np.float32)

  out = np.asarray(augment.cutout(jax.random.key(0), images, size))

  assert out.shape == images.shape and out.dtype == np.float32
  full_squares = 0
  for example in out:
    zero = example == 0
    assert (zero == zero[..., :1]).all()  # All channels of a pixel together.
    rows, cols = np.flatnonzero(zero[..., 0].any(1)), np.flatnonzero(zero[..., 0].any(0))
    assert len(rows) and len(cols)  # Clipping never removes the whole square.
    assert zero[..., 0].sum() == len(rows) * len(cols)  # A filled rectangle...
    assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
    assert len(rows) <= size and len(cols) <= size  # ...no larger than the square...
    for span in (rows, cols):  # ...and shorter only where it meets a border.
      assert len(span) == size or span[0] == 0 or span[-1] == 7
    full_squares += len(rows) == len(cols) == size
  assert 0 < full_squares < 256


def test_cutout_centres_cover_the_whole_image():
  """DeVries & Taylor: the centre is uniform over the image, so corners get cut too."""
  images = np.ones((2048, 8, 8, 1), np.float32)

  out = np.asarray(augment.cutout(jax.random.key(5), images, 2))

  assert (out == 0).any(axis=0).all()


def test_cutout_keeps_uint8_and_size_zero_is_a_no_op():
  images = random_images()

  assert augment.cutout(jax.random.key(0), images, 0) is images
  out = augment.cutout(jax.random.key(0), jnp.asarray(images), 4)
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, augment.cutout(jax.random.key(0), jnp.asarray(images), 4))


def test_normalize_maps_to_standard_scores_in_the_requested_dtype():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)

  out = augment.normalize(images, mean, std)
  half = augment.normalize(images, mean, std, dtype=jnp.bfloat16)

  expected = (images / 255.0 - np.array(mean)) / np.array(std)
  assert out.dtype == jnp.float32 and half.dtype == jnp.bfloat16
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(half.astype(jnp.float32), expected, rtol=1e-2)


def test_augmentations_run_under_jit_and_on_each_shard_of_a_split_batch():
  """Per-device use: each shard gets its own key, and shapes are the local ones."""
  images = random_images(count=16)

  @jax.jit
  def per_shard(key, shard):
    crop_key, cut_key = jax.random.split(key)
    normalized = augment.normalize(augment.random_crop_flip(crop_key, shard), (0.5,) * 3,
                                   (0.25,) * 3)
    return augment.cutout(cut_key, normalized, 4)

  keys = jax.random.split(jax.random.key(0), 4)
  out = jax.vmap(per_shard)(keys, images.reshape(4, 4, 8, 8, 3))

  assert out.shape == (4, 4, 8, 8, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out[1], per_shard(keys[1], images[4:8]))


def test_reflection_padding_fills_the_border_with_the_mirrored_image():
  """WRN's recipe: a crop shifted by the full padding shows reflected pixels, not zeros."""
  images = jnp.arange(1, 1 + 6 * 6, dtype=jnp.float32).reshape(1, 6, 6, 1)
  for seed in range(40):
    out = augment.random_crop_flip(jax.random.PRNGKey(seed), images, padding=2, flip=False,
                           pad_mode='reflect')
    assert float(jnp.min(out)) > 0  # never a zero
    reflected = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
    windows = [reflected[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
    assert any(bool(jnp.array_equal(out, w)) for w in windows)


def test_pca_lighting_shifts_along_imagenets_eigenvectors_by_alpha_times_eigenvalue():
  """fb.resnet.torch Lighting(0.1, eigval, eigvec): the offset's coordinate along
  eigenvector j is alpha_j * eigval_j, alpha_j ~ N(0, 0.1)."""
  offsets = np.asarray(augment.pca_lighting(jax.random.key(0), 20_000, 0.1), np.float64)
  eigvec = np.asarray(augment.IMAGENET_PCA_EIGVEC)
  eigval = np.asarray(augment.IMAGENET_PCA_EIGVAL)

  coordinates = offsets @ eigvec  # the columns are (nearly) orthonormal
  assert offsets.shape == (20_000, 3)
  np.testing.assert_allclose(coordinates.std(axis=0), 0.1 * eigval, rtol=0.03)
  np.testing.assert_allclose(coordinates.mean(axis=0), 0.0, atol=3 * 0.1 * eigval.max() / 100)
  single = np.asarray(augment.pca_lighting(jax.random.key(3), 1, 0.1))[0]
  alpha = 0.1 * np.asarray(jax.random.normal(jax.random.key(3), (1, 3)))[0]
  np.testing.assert_allclose(single, eigvec @ (alpha * eigval), rtol=1e-5)
