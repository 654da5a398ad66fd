"""Normalisations fitted per pixel on the training split: applied before augmentation.

`dataset.normalization` picks how images become network inputs:
  'dataset'     per-channel mean/std of the train split (fb.resnet.torch
                datasets/cifar10.lua); `augment.normalize`, after crop and flip.
  'imagenet'    the customary ImageNet per-channel mean/std, for pretrained weights.
  'pixel_mean'  the train split's mean image subtracted, no division (He et al. 2015,
                Sec. 4.2: "the per-pixel mean subtracted").
  'zca'         global contrast normalisation then ZCA whitening, fitted on the train
                split: the "GCN + ZCA via pylearn2" preprocessing of the WRN code's v1
                (szagoruyko/wide-residual-networks README, which ran pylearn2's
                scripts/datasets/make_cifar10_gcn_whitened.py), used for WRN Table 4.

The last two are fitted here with numpy on the host, once per run (the ZCA matrix is
cached next to the decoded arrays), and applied on the device by `apply` when a step
gathers its uint8 examples, *before* augmentation: the WRN code loaded the whitened
dataset and padded, cropped and flipped the whitened images, so the crop's zero padding
is the whitened zero. He et al. do not say whether they padded before or after
subtracting the mean; subtracting first pads with the mean image's value (zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NORMALIZATIONS = ('dataset', 'imagenet', 'pixel_mean', 'zca')
FITTED = ('pixel_mean', 'zca')  # fitted per pixel on the train split, applied before augmentation
FITTED_ARRAYS = ('pixel_mean', 'zca_matrix')  # the arrays that say one of them is in use

# pylearn2 make_cifar10_gcn_whitened.py: CIFAR10(which_set='train', gcn=55.) runs
# pylearn2/expr/preprocessing.py global_contrast_normalize(X, scale=55.) with its defaults
# subtract_mean=True, use_std=False, sqrt_bias=0., min_divisor=1e-8: every image minus its
# own mean, then scaled to L2 norm 55 (about unit variance per value for 3072 values).
GCN_SCALE = 55.0
GCN_MIN_DIVISOR = 1e-8
# pylearn2/datasets/preprocessing.py ZCA() defaults: filter_bias=0.1 added to the
# covariance's diagonal, n_components=None and n_drop_components=None (every component).
ZCA_FILTER_BIAS = 0.1


# ----------------------------------------------------------------------------- fitting


def pixel_mean(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
  """The mean image of uint8 `images` [N, H, W, C], float32 in [0, 1] pixel units.

  The paper does not state a scale; [0, 1] keeps inputs on the scale of 'dataset'.
  """
  total = np.zeros(images.shape[1:], np.float64)
  for start in range(0, len(images), chunk):
    total += images[start:start + chunk].sum(axis=0, dtype=np.float64)
  return (total / (255.0 * len(images))).astype(np.float32)


def global_contrast_normalize(flat: np.ndarray) -> np.ndarray:
  """pylearn2's GCN of rows [N, D] (raw pixel values): zero mean, L2 norm GCN_SCALE."""
  centred = flat - flat.mean(axis=1, keepdims=True)
  divisor = np.sqrt(np.square(centred).sum(axis=1, keepdims=True)) / GCN_SCALE
  return centred / np.where(divisor < GCN_MIN_DIVISOR, 1.0, divisor)


def fit_zca(images: np.ndarray, chunk: int = 2048) -> dict[str, np.ndarray]:
  """GCN then ZCA fitted on uint8 `images` [N, H, W, C], as pylearn2's ZCA.fit does.

  mean = the mean GCN'd image; covariance = X^T X / N of the centred rows plus
  ZCA_FILTER_BIAS on the diagonal; matrix = V diag(eigenvalues^-1/2) V^T of its
  eigen-decomposition, so whitened = (gcn(x) - mean) @ matrix. Accumulated in float64
  over chunks; returned as float32 {'zca_mean': [D], 'zca_matrix': [D, D]}. Rows are
  flattened HWC where pylearn2 flattens CHW: the same whitening up to a permutation of
  the pixels, which ZCA is equivariant to.
  """
  count, dims = len(images), int(np.prod(images.shape[1:]))

  def gcn_chunks():
    for start in range(0, count, chunk):
      yield global_contrast_normalize(images[start:start + chunk].reshape(-1, dims)
                                      .astype(np.float64))

  mean = sum(rows.sum(axis=0) for rows in gcn_chunks()) / count
  covariance = np.zeros((dims, dims), np.float64)
  for rows in gcn_chunks():
    centred = rows - mean
    covariance += centred.T @ centred
  covariance /= count
  covariance[np.diag_indices(dims)] += ZCA_FILTER_BIAS
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  matrix = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
  return {'zca_mean': mean.astype(np.float32), 'zca_matrix': matrix.astype(np.float32)}


def fit(normalization: str, images: np.ndarray) -> dict[str, np.ndarray]:
  """The arrays `apply` needs for `normalization`, fitted on the train images; {} if none."""
  if normalization == 'pixel_mean':
    return {'pixel_mean': pixel_mean(images)}
  if normalization == 'zca':
    return fit_zca(images)
  return {}


# ----------------------------------------------------------------------------- applying


def apply(images_uint8: jax.Array, fitted: dict) -> jax.Array:
  """float32 network inputs from uint8 [N, H, W, C] with the arrays `fit` returned.

  GCN in float32 on raw pixel values as pylearn2 did; the whitening is one
  [N, D] x [D, D] matmul at full float32 precision (TF32 would perturb it by about 1e-3).
  """
  pixels = images_uint8.astype(jnp.float32)
  if 'pixel_mean' in fitted:
    return pixels / 255.0 - fitted['pixel_mean']
  flat = pixels.reshape(pixels.shape[0], -1)
  centred = flat - flat.mean(axis=1, keepdims=True)
  divisor = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True)) / GCN_SCALE
  gcn = centred / jnp.where(divisor < GCN_MIN_DIVISOR, 1.0, divisor)
  whitened = jnp.dot(gcn - fitted['zca_mean'], fitted['zca_matrix'],
                     precision=lax.Precision.HIGHEST)
  return whitened.reshape(images_uint8.shape)
