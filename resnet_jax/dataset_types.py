"""The types every dataset module shares: the user-facing error and decoded arrays.

They live apart from resnet_jax.datasets so that the format parsers, the
sources and the cache can use them without importing the public API, which
imports them.
"""

from collections.abc import Callable
import dataclasses

import numpy as np


class DatasetError(ValueError):
  """A dataset problem the user can fix; the message is one line naming the fix."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  images: np.ndarray  # uint8 [N, H, W, 3], NHWC
  labels: np.ndarray  # int32 [N]


@dataclasses.dataclass(frozen=True)
class DecodedCopy:
  """Both splits of one dataset copy, before any subsetting."""
  source: str
  train: ArraySplit
  test: ArraySplit
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a dataset copy comes from: a cache identity and its decoder."""
  identity: tuple
  decode: Callable[[], DecodedCopy]
