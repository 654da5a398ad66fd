"""The data: every dataset one row of a registry, and one pipeline for all of them.

  registry.py       one row per dataset: classes, splits, size, formats, download
  formats.py        CIFAR python/binary, SVHN .mat, image folders and tarballs: the parsers
  sources.py        a local copy, a tfds data_dir or a verified download
  cache.py          the decode-once cache of the arrays (and of a fitted ZCA)
  in_memory.py      small datasets as uint8 arrays: splits, statistics, synthetic data
  imagenet.py       ImageNet, streamed (tfds data_source + grain) with its crops
  batching.py       which examples: the batch plan, the train subset, the validation hold-out
  preprocessing.py  normalisations fitted on the train split (pixel mean, ZCA)
  augment.py        on-device crop, flip, cutout, colour noise, normalisation
  pipeline.py       make_pipeline(config, mesh): a run's batches, in memory or streamed

The names below are the subsystem's interface.
"""

from resnet_jax.data.in_memory import num_classes
from resnet_jax.data.pipeline import make_pipeline
from resnet_jax.data.registry import Dataset, register
