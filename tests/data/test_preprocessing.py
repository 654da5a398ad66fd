"""resnet_jax/data/preprocessing.py: the per-pixel mean and pylearn2's GCN + ZCA whitening."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import preprocessing


def correlated_images(count: int = 3000, size: int = 4, seed: int = 0) -> np.ndarray:
  """uint8 images whose pixels are strongly correlated (a smooth field plus noise)."""
  rng = np.random.default_rng(seed)
  dims = size * size * 3
  mixing = rng.normal(size=(dims, 6)) * 40
  values = 128 + rng.normal(size=(count, 6)) @ mixing.T + rng.normal(size=(count, dims)) * 5
  return np.clip(values, 0, 255).astype(np.uint8).reshape(count, size, size, 3)


def applied(images: np.ndarray, fitted: dict) -> np.ndarray:
  return np.asarray(preprocessing.apply(jnp.asarray(images), fitted), np.float64)


def test_pixel_mean_inputs_average_to_zero_at_every_pixel_of_the_train_split():
  images = correlated_images(500, size=6)
  fitted = preprocessing.fit('pixel_mean', images)

  inputs = applied(images, fitted)

  assert fitted['pixel_mean'].shape == (6, 6, 3)
  np.testing.assert_allclose(inputs.mean(axis=0), 0.0, atol=1e-6)
  np.testing.assert_allclose(inputs[0], images[0] / 255 - images.mean(0) / 255, atol=1e-6)


def test_gcn_gives_each_image_zero_mean_and_the_l2_norm_of_pylearn2s_scale_55():
  images = correlated_images(20).reshape(20, -1).astype(np.float64)
  images[3] = 77.0  # A constant image: its divisor is below min_divisor, so it stays 0.

  normalized = preprocessing.global_contrast_normalize(images)

  np.testing.assert_allclose(normalized.mean(axis=1), 0.0, atol=1e-9)
  norms = np.linalg.norm(normalized, axis=1)
  np.testing.assert_allclose(np.delete(norms, 3), preprocessing.GCN_SCALE, rtol=1e-9)
  assert norms[3] == 0.0
  np.testing.assert_allclose(  # invariant to the pixels' scale and offset
      preprocessing.global_contrast_normalize(images * 0.5 + 9), normalized, atol=1e-9)


def test_zca_whitened_train_split_has_identity_covariance_less_the_filter_bias():
  """pylearn2 whitens with (C + 0.1 I)^-1/2, so the whitened covariance is
  C (C + 0.1 I)^-1 = I - 0.1 P^2: near 1 along strong directions, below 1 along weak ones."""
  images = correlated_images()
  fitted = preprocessing.fit('zca', images)
  matrix = fitted['zca_matrix'].astype(np.float64)

  whitened = applied(images, fitted).reshape(len(images), -1)
  covariance = np.cov(whitened, rowvar=False, bias=True)

  np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
  identity = np.eye(len(matrix))
  np.testing.assert_allclose(covariance + preprocessing.ZCA_FILTER_BIAS * matrix @ matrix,
                             identity, atol=2e-4)
  strong = np.linalg.eigvalsh(covariance)[-5:]
  np.testing.assert_allclose(strong, 1.0, atol=0.01)  # the correlated directions: white
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)  # zero-phase: symmetric


def test_zca_on_the_device_matches_the_host_math_on_unseen_images():
  images = correlated_images(800)
  fitted = preprocessing.fit('zca', images)
  unseen = correlated_images(16, seed=1)

  gcn = preprocessing.global_contrast_normalize(unseen.reshape(16, -1).astype(np.float64))
  expected = (gcn - fitted['zca_mean']) @ fitted['zca_matrix'].astype(np.float64)

  assert applied(unseen, fitted).shape == unseen.shape
  np.testing.assert_allclose(applied(unseen, fitted).reshape(16, -1), expected, atol=1e-4)


def test_the_per_channel_normalisations_fit_nothing():
  assert preprocessing.fit('dataset', correlated_images(4)) == {}
  assert preprocessing.fit('imagenet', correlated_images(4)) == {}


@pytest.mark.parametrize('normalization', preprocessing.FITTED)
def test_fitted_arrays_name_their_normalisation(normalization):
  fitted = preprocessing.fit(normalization, correlated_images(50))
  assert sum(name in fitted for name in preprocessing.FITTED_ARRAYS) == 1
