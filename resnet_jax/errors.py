"""Every error a user fixes, under one base class, so that launch.py catches one type.

Each is raised with a message that names the problem and its fix, and is shown as that
one line, without a traceback (launch.py). Programming errors stay plain exceptions and
keep their tracebacks.
"""


class ResnetJaxError(ValueError):
  """A bad config value, path, file, workdir or setting; the message is one line naming
  the fix (whitespace, newlines included, is collapsed to single spaces)."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


class ConfigError(ResnetJaxError):
  """A config value that cannot work; the message names the allowed values."""


class SweepError(ConfigError):
  """A sweep spec that cannot run; raised before any training."""


class DatasetError(ResnetJaxError):
  """A dataset copy or split that cannot be used: missing, damaged, of other images or
  classes than the config says."""


class CpuSettingsError(ResnetJaxError):
  """A bad RESNET_JAX_CPU_SETTINGS value; the message names the allowed ones."""


class ConversionError(ResnetJaxError):
  """Weights that do not fit the architecture; the message names each tensor."""


class RunError(ResnetJaxError):
  """A run that cannot start or go on for a reason the user fixes: its workdir, its
  checkpoints, its disk."""


class CheckpointMismatch(RunError):
  """An intact checkpoint holds another model or optimiser than the one restored."""


class WorkdirError(RunError):
  """The workdir cannot be written: a file, no permission, or a full disk."""


class WorkdirInUse(RunError):
  """Another live process trains in this workdir."""


class ConfigChanged(RunError):
  """A resume whose config differs from the run's record in a key that may not change."""


class TrainingDiverged(RunError):
  """A measured value became NaN or Inf; the last good checkpoint is left untouched."""
