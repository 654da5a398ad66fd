"""The types every dataset module shares: decoded arrays and their sources.

They live apart from resnet_jax.datasets so that the format parsers, the
sources and the cache can use them without importing the public API, which
imports them.
"""

from collections.abc import Callable
import dataclasses

import numpy as np


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
