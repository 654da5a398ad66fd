"""Image augmentation and normalisation in JAX, run inside the jitted train step.

Images stay uint8 on the accelerator until `normalize`, so a whole CIFAR-sized
dataset fits in device memory and no host round trip sits in the step.

Every function works on whatever batch it is handed: inside `shard_map` that is
the per-device shard, so the caller folds the device index into `key` to give
each shard its own randomness. Results depend only on `key` and the inputs.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4,
                     flip: bool = True, pad_mode: str = 'constant') -> jax.Array:
  """Pads by `padding`, takes a random HxW crop and maybe mirrors it.

  The CIFAR recipe of He et al. 2015 (arXiv:1512.03385, sec. 4.2): "4 pixels
  are padded on each side, and a 32x32 crop is randomly sampled from the
  padded image or its horizontal flip". Crop offsets and flips are drawn
  independently per example.

  Pad once, then one `dynamic_slice` per example under vmap (a single gather),
  and flip by selecting from a reversed copy: no per-example control flow.

  Args:
    key: PRNG key.
    images: [N, H, W, C], any dtype (train.device_images normalises first).
    padding: pixels of padding on each side; 0 disables cropping.
    flip: whether to mirror each example with probability 1/2.
    pad_mode: 'constant' (zeros; after normalisation the mean colour, as He et al.) or
      'reflect' (Zagoruyko & Komodakis 2016
      fill the border "with reflections of original image").

  Returns:
    Array with the shape and dtype of `images`.
  """
  crop_key, flip_key = jax.random.split(key)
  batch, height, width, channels = images.shape
  out = images
  if padding > 0:
    padded = jnp.pad(
        images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=pad_mode)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)

    def crop_one(image, offset):
      return lax.dynamic_slice(image, (offset[0], offset[1], 0),
                               (height, width, channels))

    out = jax.vmap(crop_one)(padded, offsets)
  if flip:
    mirrored = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
    out = jnp.where(mirrored, out[:, :, ::-1, :], out)
  return out


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """Zeroes one `size` x `size` square per example (DeVries & Taylor 2017).

  As in the paper (arXiv:1708.04552, sec. 3), the square's centre is uniform
  over the whole image and the square is clipped at the borders, so near an
  edge less than size*size pixels are removed. Applied after normalisation,
  zero is the dataset mean. The square covers rows
  [cy - size // 2, cy - size // 2 + size), and the same for columns.

  Args:
    key: PRNG key.
    images: [N, H, W, C], any dtype.
    size: side of the square in pixels; 0 returns `images` unchanged.

  Returns:
    Array with the shape and dtype of `images`.
  """
  if size <= 0:
    return images
  batch, height, width, channels = images.shape
  row_key, col_key = jax.random.split(key)
  top = jax.random.randint(row_key, (batch, 1, 1), 0, height) - size // 2
  left = jax.random.randint(col_key, (batch, 1, 1), 0, width) - size // 2
  # Masking a [N, H, W*C] view keeps a long minor axis: twice as fast on CPU
  # as broadcasting over C=3, and free (a bitcast) on GPU/TPU.
  rows = lax.broadcasted_iota(jnp.int32, (1, height, 1), 1)
  cols = lax.broadcasted_iota(jnp.int32, (1, 1, width * channels), 2) // channels
  inside = ((rows >= top) & (rows < top + size)
            & (cols >= left) & (cols < left + size))
  flat = images.reshape(batch, height, width * channels)
  return jnp.where(inside, jnp.zeros((), images.dtype), flat).reshape(images.shape)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """Maps uint8 pixels to (x / 255 - mean) / std per channel, in `dtype`.

  `mean` and `std` are per-channel statistics in [0, 1] (InMemoryDataset.mean
  and .std). The arithmetic is one multiply-add in float32; only the result is
  cast, so bfloat16 outputs do not lose precision in the intermediate.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  scale = 1.0 / (255.0 * std)
  offset = -mean / std
  return (images.astype(jnp.float32) * scale + offset).astype(dtype)


# fb.resnet.torch datasets/imagenet.lua `pca`: the eigenvalues and eigenvectors (the
# columns of IMAGENET_PCA_EIGVEC) of ImageNet's RGB pixel covariance, pixels in [0, 1].
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))


def pca_lighting(key: jax.Array, batch: int, alpha_std: float) -> jax.Array:
  """AlexNet's colour augmentation: one RGB offset per example, float32 [batch, 3].

  Krizhevsky et al. 2012 (Sec. 4.1) add eigvec @ (alpha * eigval) to every pixel, with
  alpha ~ N(0, alpha_std) drawn per example and component; fb.resnet.torch's
  `Lighting(0.1, eigval, eigvec)` (datasets/transforms.lua) does so in [0, 1] pixel
  units, before its per-channel normalisation. Add the result / std after `normalize`.
  """
  alpha = alpha_std * jax.random.normal(key, (batch, 3), jnp.float32)
  eigval = jnp.asarray(IMAGENET_PCA_EIGVAL, jnp.float32)
  eigvec = jnp.asarray(IMAGENET_PCA_EIGVEC, jnp.float32)
  return (alpha * eigval) @ eigvec.T
