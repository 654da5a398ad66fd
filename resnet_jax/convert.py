"""PyTorch (torchvision / timm) ResNet weights -> resnet_jax variables, and back.

    python -m resnet_jax.convert --arch=resnet50 --weights=resnet50.pth --out=/tmp/r50
    python launch.py --config=... --config.init_from=/tmp/r50

Notebook use:

    model, variables = convert.from_torch(state_dict, arch='resnet50')
    logits = model.apply(variables, images_nhwc, train=False)

The mapping is driven by our own model's variable tree: every parameter and BN statistic
the Flax model expects gets exactly one torch name, and every torch tensor must be used.
A missing, extra or misshapen tensor is a `ConversionError` that names it; the only
tensors dropped are BN's `num_batches_tracked` counters, by name. Nothing is skipped
silently, because a half-loaded network still runs and just gives wrong answers.

Names (torchvision's, which timm's `resnet*` / `wide_resnet*` share):

    conv1, bn1                      -> stem_conv, stem_bn
    layer{s}.{b}.conv{i}, .bn{i}    -> stage{s}_block{b}/conv{i}, bn{i}   (s 1-based, b 0-based)
    layer{s}.{b}.downsample.0 / .1  -> stage{s}_block{b}/shortcut_conv / shortcut_bn
    fc                              -> head

Layouts: conv weights OIHW -> HWIO, linear (out, in) -> (in, out), BN weight/bias ->
scale/bias, running_mean/running_var -> batch_stats mean/var.

The padding trap: torch pads every conv and the stem max-pool symmetrically (k // 2 on
each side). XLA's 'SAME' puts the odd pixel of a strided layer's padding at the end: a
3x3 stride-2 conv on an even-sized input gets (0, 1) instead of torch's (1, 1), the
7x7 stem at 224 px (2, 3) instead of (3, 3). Same weights, different logits, no error.
`model/resnet.py` pads explicitly and symmetrically, which is what makes converted weights
reproduce torchvision's logits; tests/test_convert.py checks it on even and odd sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.model import architecture, build_model, default_model_config, model_name, preset
from resnet_jax.errors import ConfigError, ConversionError

METADATA_FILE = 'model.json'
VARIABLES_DIR = 'variables'
FORMAT = 'resnet_jax.convert/1'
DROPPED_SUFFIX = '.num_batches_tracked'  # BN's step counter: no meaning in eval or in Flax
CHECKPOINT_WRAPPERS = ('state_dict', 'model')  # full training checkpoints nest the weights
HEAD_WEIGHT = 'fc.weight'
_MAX_NAMED = 8  # tensors named per kind of problem; the rest are counted


@dataclasses.dataclass(frozen=True)
class Entry:
  """One variable of the Flax model and the torch tensor that holds it."""
  collection: str  # 'params' | 'batch_stats'
  path: tuple[str, ...]  # module path and leaf name inside the collection
  torch_name: str
  shape: tuple[int, ...]  # the Flax shape

  @property
  def kind(self) -> str:
    """'conv', 'linear' or 'plain': how the layout differs between the frameworks."""
    if self.path[-1] == 'kernel':
      return 'conv' if len(self.shape) == 4 else 'linear'
    return 'plain'

  @property
  def torch_shape(self) -> tuple[int, ...]:
    if self.kind == 'conv':  # HWIO -> OIHW
      height, width, in_channels, out_channels = self.shape
      return (out_channels, in_channels, height, width)
    if self.kind == 'linear':  # (in, out) -> (out, in)
      return tuple(reversed(self.shape))
    return self.shape


# ----------------------------------------------------------------------------- names

_TOP_MODULES = {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'head': 'fc'}
_SHORTCUT_MODULES = {'shortcut_conv': 'downsample.0', 'shortcut_bn': 'downsample.1'}
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_BLOCK = re.compile(r'stage(\d+)_block(\d+)$')
_BRANCH_LAYER = re.compile(r'(conv|bn)\d+$')


def _torch_module(module_path: tuple[str, ...]) -> str:
  """'stage2_block0/shortcut_conv' -> 'layer2.0.downsample.0', and so on."""
  if len(module_path) == 1 and module_path[0] in _TOP_MODULES:
    return _TOP_MODULES[module_path[0]]
  if len(module_path) == 2 and (block := _BLOCK.match(module_path[0])):
    child = module_path[1]
    if _BRANCH_LAYER.match(child) or child in _SHORTCUT_MODULES:
      stage, index = block.groups()
      return f'layer{stage}.{index}.{_SHORTCUT_MODULES.get(child, child)}'
  raise ConversionError(f'resnet_jax module {"/".join(module_path)} has no torchvision name')


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision state_dict key of one Flax variable."""
  return f'{_torch_module(path[:-1])}.{_LEAVES[(collection, path[-1])]}'


# ----------------------------------------------------------------------------- models

def model_config(arch) -> ml_collections.ConfigDict:
  """A preset name or a model config, checked to be a torchvision-layout network."""
  if isinstance(arch, str):
    config = preset(arch)
  else:
    config = default_model_config()
    config.update(dict(arch))
  block = architecture(config)['block_config']  # raises ConfigError on a bad config
  torchvision_layout = (config.family == 'imagenet' and not block.preact and
                        block.shortcut in ('B', 'C') and block.norm == 'batch' and
                        block.bottleneck_stride == '3x3')
  if not torchvision_layout:
    raise ConversionError(
        f'{model_name(config)} has no torchvision counterpart; convertible are the '
        'post-activation ImageNet presets: resnet18/34/50/101/152, wide_resnet50_2/101_2')
  return config


def abstract_variables(config, num_classes: int) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, without computing anything."""
  model = build_model(config, num_classes)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def _leaves(tree, prefix: tuple[str, ...] = ()):
  """(path, leaf) pairs of a nested dict, in insertion order."""
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _network_order(name: str) -> tuple:
  """Sort key: stem, then layer1.0 ... layer4.N (layer2 before layer10), then fc."""
  position = 2 if name.startswith('fc.') else 1 if name.startswith('layer') else 0
  return position, [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def conversion_table(config, num_classes: int) -> list[Entry]:
  """Every variable the Flax model holds, each with its torch name and Flax shape."""
  key = json.dumps(ml_collections.ConfigDict(dict(config)).to_dict(), sort_keys=True)
  return list(_cached_table(key, num_classes))


@functools.lru_cache(maxsize=16)
def _cached_table(config_json: str, num_classes: int) -> tuple[Entry, ...]:
  """Tracing the model for its shapes takes about a second for resnet50: do it once."""
  variables = abstract_variables(json.loads(config_json), num_classes)
  entries = [Entry(collection, path, torch_name(collection, path), tuple(leaf.shape))
             for collection in ('params', 'batch_stats')
             for path, leaf in _leaves(variables[collection])]
  return tuple(sorted(entries, key=lambda entry: _network_order(entry.torch_name)))


# ----------------------------------------------------------------------------- tensors

def to_numpy(value) -> np.ndarray:
  """A torch tensor (any float dtype, bfloat16 included) or array-like, as numpy."""
  if hasattr(value, 'detach'):  # a torch.Tensor; torch itself is never imported here
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16
    return value.numpy()
  return np.asarray(value)


def _from_torch_layout(entry: Entry, array: np.ndarray) -> np.ndarray:
  if entry.kind == 'conv':
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  if entry.kind == 'linear':
    return np.transpose(array)
  return array


def _to_torch_layout(entry: Entry, array: np.ndarray) -> np.ndarray:
  if entry.kind == 'conv':
    return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
  if entry.kind == 'linear':
    return np.transpose(array)
  return array


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _listed(kind: str, items: list[str]) -> str:
  shown = ', '.join(items[:_MAX_NAMED])
  more = f' and {len(items) - _MAX_NAMED} more' if len(items) > _MAX_NAMED else ''
  return f'{len(items)} {kind}: {shown}{more}'


def _check_fit(arrays: Mapping[str, np.ndarray], table: list[Entry], arch_name: str) -> None:
  """Raises one ConversionError naming every missing, misshapen and unmapped tensor."""
  expected = {entry.torch_name: entry for entry in table}
  missing = [f'{name} (expected shape {entry.torch_shape})'
             for name, entry in expected.items() if name not in arrays]
  misshapen = [f'{name} (shape {tuple(arrays[name].shape)}, expected {entry.torch_shape})'
               for name, entry in expected.items()
               if name in arrays and tuple(arrays[name].shape) != entry.torch_shape]
  unmapped = [f'{name} (shape {tuple(array.shape)})' for name, array in arrays.items()
              if name not in expected and not name.endswith(DROPPED_SUFFIX)]
  problems = [_listed(kind, items) for kind, items in
              (('missing', missing), ('misshapen', misshapen), ('unmapped', unmapped)) if items]
  if problems:
    raise ConversionError(f'the state_dict does not fit {arch_name}: ' + '; '.join(problems))


def strip_wrappers(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """The bare state_dict inside a training checkpoint, without DataParallel's 'module.'."""
  for key in CHECKPOINT_WRAPPERS:
    if isinstance(state_dict.get(key), Mapping):
      return strip_wrappers(state_dict[key])
  if state_dict and all(name.startswith('module.') for name in state_dict):
    return {name[len('module.'):]: value for name, value in state_dict.items()}
  return state_dict


def infer_num_classes(state_dict: Mapping[str, Any]) -> int:
  """The number of classes of the head, from fc.weight's (out, in) shape."""
  if HEAD_WEIGHT not in state_dict:
    raise ConversionError(f'missing {HEAD_WEIGHT} (expected shape (num_classes, features)); '
                          'cannot infer the number of classes')
  return int(to_numpy(state_dict[HEAD_WEIGHT]).shape[0])


# ----------------------------------------------------------------------------- API

def convert_state_dict(state_dict: Mapping[str, Any], arch,
                       num_classes: int | None = None) -> tuple[Any, int, dict[str, Any]]:
  """(model config, num_classes, variables as numpy float32) from a torch state_dict."""
  config = model_config(arch)
  state_dict = strip_wrappers(state_dict)
  num_classes = infer_num_classes(state_dict) if num_classes is None else num_classes
  arrays = {name: to_numpy(value) for name, value in state_dict.items()}
  table = conversion_table(config, num_classes)
  _check_fit(arrays, table, model_name(config))
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for entry in table:
    array = _from_torch_layout(entry, arrays[entry.torch_name]).astype(np.float32)
    _set(variables[entry.collection], entry.path, np.ascontiguousarray(array))
  return config, num_classes, variables


def from_torch(state_dict: Mapping[str, Any], arch='resnet50', num_classes: int | None = None,
               *, half_precision: bool = False):
  """(model, variables) ready for `model.apply(variables, images_nhwc, train=False)`.

  `state_dict` maps torchvision/timm names to torch tensors or numpy arrays; a full
  checkpoint with the weights under 'state_dict' or 'model' works too. `num_classes`
  defaults to the rows of fc.weight.
  """
  config, num_classes, variables = convert_state_dict(state_dict, arch, num_classes)
  model = build_model(config, num_classes, half_precision=half_precision)
  return model, jax.tree.map(jnp.asarray, variables)


def to_torch_state_dict(variables: Mapping[str, Any], arch='resnet50') -> dict[str, np.ndarray]:
  """The inverse: numpy arrays under torchvision's names, loadable with load_state_dict.

  `num_batches_tracked` is written as 0 so that a strict `load_state_dict` accepts it.
  """
  config = model_config(arch)
  num_classes = int(np.shape(variables['params']['head']['bias'])[0])
  state_dict: dict[str, np.ndarray] = {}
  for entry in conversion_table(config, num_classes):
    leaf = variables[entry.collection]
    for key in entry.path:
      leaf = leaf[key]
    array = np.asarray(leaf, dtype=np.float32)
    if array.shape != entry.shape:
      raise ConversionError(f'{entry.collection}/{"/".join(entry.path)} has shape {array.shape}, '
                            f'expected {entry.shape}')
    state_dict[entry.torch_name] = np.ascontiguousarray(_to_torch_layout(entry, array))
    if entry.torch_name.endswith('.running_var'):
      counter = entry.torch_name[:-len('.running_var')] + DROPPED_SUFFIX
      state_dict[counter] = np.zeros((), np.int64)
  return state_dict


# ----------------------------------------------------------------------------- files

def read_state_dict(path) -> Mapping[str, Any]:
  """A state_dict from .safetensors (numpy only, no torch), .pth/.pt/.bin (torch) or .npz.

  A file that cannot be parsed (truncated, corrupt, another format) is a ConversionError
  naming the file and the reader's reason.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.suffix not in ('.safetensors', '.npz'):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError(f'reading {path.name} needs torch (pip install torch); '
                        '.safetensors files need only the safetensors package') from error
  try:
    if path.suffix == '.safetensors':
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      state_dict = load_file(str(path))
    elif path.suffix == '.npz':
      with np.load(path) as archive:
        state_dict = {name: archive[name] for name in archive.files}
    else:
      state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # each reader fails in its own way on a damaged file
    reason = ' '.join(str(error).split())[:200] or type(error).__name__
    raise ConversionError(f'cannot read weights file {path} ({type(error).__name__}: {reason}); '
                          'download it again or check its format (.pth, .pt, .bin, '
                          '.safetensors, .npz)') from None
  if not isinstance(state_dict, Mapping):
    raise ConversionError(f'weights file {path} holds a {type(state_dict).__name__}, not a '
                          'state_dict (a mapping of tensor names to tensors)')
  return state_dict


def save_converted(out_dir, config, num_classes: int, variables, *, source: str = '') -> None:
  """Writes the variables as an orbax checkpoint plus model.json into out_dir."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  variables = {key: variables[key] for key in ('params', 'batch_stats')}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / VARIABLES_DIR, variables)
  metadata = dict(format=FORMAT, arch=model_name(config), num_classes=num_classes,
                  model=config.to_dict(), source=source)
  (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + '\n')


def load_converted(directory) -> tuple[ml_collections.ConfigDict, int, dict[str, Any]]:
  """(model config, num_classes, {'params', 'batch_stats'}) of a converted checkpoint.

  The variables are host numpy float32 arrays, so the caller shards them as it likes;
  `build_model(config, num_classes)` is the model they belong to.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory).absolute()
  metadata_path = directory / METADATA_FILE
  if not metadata_path.is_file():
    raise FileNotFoundError(f'{directory} is not a converted checkpoint: no {METADATA_FILE}')
  metadata = json.loads(metadata_path.read_text())
  if metadata.get('format') != FORMAT:
    raise ConversionError(f'{metadata_path} has format {metadata.get("format")!r}, '
                          f'expected {FORMAT!r}')
  config = ml_collections.ConfigDict(metadata['model'])
  num_classes = int(metadata['num_classes'])
  target = abstract_variables(config, num_classes)
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(directory / VARIABLES_DIR, target)
  return config, num_classes, jax.tree.map(np.asarray, variables)


# ----------------------------------------------------------------------------- CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m resnet_jax.convert',
      description='Convert torchvision/timm ResNet weights to a resnet_jax checkpoint '
                  '(use it with --config.init_from=OUT).')
  parser.add_argument('--arch', required=True,
                      help='preset name: resnet18/34/50/101/152, wide_resnet50_2/101_2')
  parser.add_argument('--weights', required=True, help='.pth, .pt, .bin, .safetensors or .npz')
  parser.add_argument('--out', required=True, help='output directory (must not hold a checkpoint)')
  parser.add_argument('--num-classes', '--num_classes', type=int, default=None,
                      help='expected classes of the head (default: rows of fc.weight)')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  out_dir = pathlib.Path(args.out)
  if (out_dir / VARIABLES_DIR).exists() or (out_dir / METADATA_FILE).exists():
    print(f'error: {out_dir} already holds a converted checkpoint', file=sys.stderr)
    return 2
  try:
    state_dict = read_state_dict(args.weights)
    config, num_classes, variables = convert_state_dict(state_dict, args.arch,
                                                        args.num_classes)
  except (ConversionError, ConfigError, FileNotFoundError, ImportError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  try:
    save_converted(out_dir, config, num_classes, variables,
                   source=os.path.basename(args.weights))
  except OSError as error:
    print(f'error: cannot write {out_dir} ({error.strerror or error}); give a writable --out '
          'folder', file=sys.stderr)
    return 1
  count = sum(1 for _ in _leaves(variables))
  dropped = sum(1 for name in strip_wrappers(state_dict) if name.endswith(DROPPED_SUFFIX))
  print(f'converted {count} tensors of {model_name(config)} ({num_classes} classes; '
        f'{dropped} num_batches_tracked counters dropped) to {out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
