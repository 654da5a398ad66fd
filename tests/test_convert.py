"""torchvision/timm weights -> resnet_jax: every tensor mapped, nothing skipped, same logits.

Two layers of checks:
* torch-free: a synthetic state_dict with torchvision's names and shapes (made by the
  inverse mapping, `to_torch_state_dict`) round-trips exactly, and any missing, extra or
  misshapen tensor is an error that names it;
* with torch and torchvision: converted weights give torchvision's logits (max abs diff
  <= 1e-4, float32, eval mode) for resnet18, resnet50 and wide_resnet50_2, with random
  weights, random BN affine parameters and data-calibrated BN running statistics.

The padding trap: XLA's 'SAME' pads a stride-2 layer asymmetrically (0 before, 1 after
for a 3x3 on an even input), torch pads symmetrically. At 97 px every stride-2 layer
sees an odd size (97, 49, 25, 13, 7) and the two happen to agree; at 64 or 224 px they
do not. So the equivalence test runs on both kinds of size, and
`test_xla_same_padding_would_not_match` shows the even size catches the trap.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import sys
import types

import jax
import numpy as np
import pytest

from resnet_jax import convert, errors
from resnet_jax.model import presets, resnet

TOLERANCE = 1e-4  # max abs logit difference, float32


def random_variables(arch: str, num_classes: int, seed: int = 0):
  """Variables of the right shapes with random values everywhere (BN variances > 0)."""
  rng = np.random.default_rng(seed)
  abstract = convert.abstract_variables(presets.preset(arch), num_classes)

  def fill(path, leaf):
    values = rng.standard_normal(leaf.shape, dtype=np.float32)
    return np.abs(values) + 0.1 if path[-1].key == 'var' else values

  return jax.tree_util.tree_map_with_path(fill, abstract)


def assert_trees_equal(actual, expected):
  flat_actual = dict(jax.tree_util.tree_leaves_with_path(actual))
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert flat_actual.keys() == flat_expected.keys()
  for path, value in flat_expected.items():
    np.testing.assert_array_equal(np.asarray(flat_actual[path]), np.asarray(value),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def resnet18_state_dict():
  return convert.to_torch_state_dict(random_variables('resnet18', 10), 'resnet18')


# ----------------------------------------------------------------------------- names


def test_torch_names_follow_torchvision():
  assert convert.torch_name('params', ('stem_conv', 'kernel')) == 'conv1.weight'
  assert convert.torch_name('params', ('stem_bn', 'scale')) == 'bn1.weight'
  assert convert.torch_name('batch_stats', ('stem_bn', 'var')) == 'bn1.running_var'
  assert (convert.torch_name('params', ('stage1_block0', 'conv3', 'kernel'))
          == 'layer1.0.conv3.weight')
  assert (convert.torch_name('batch_stats', ('stage4_block2', 'bn2', 'mean'))
          == 'layer4.2.bn2.running_mean')
  assert (convert.torch_name('params', ('stage2_block0', 'shortcut_conv', 'kernel'))
          == 'layer2.0.downsample.0.weight')
  assert (convert.torch_name('params', ('stage2_block0', 'shortcut_bn', 'bias'))
          == 'layer2.0.downsample.1.bias')
  assert convert.torch_name('params', ('head', 'kernel')) == 'fc.weight'


@pytest.mark.parametrize('arch, num_tensors', [('resnet18', 122), ('resnet50', 320),
                                               ('wide_resnet50_2', 320)])
def test_exported_state_dict_has_torchvisions_size(arch, num_tensors):
  """torchvision's state_dict sizes, num_batches_tracked included."""
  zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32),
                       convert.abstract_variables(presets.preset(arch), 1000))
  state_dict = convert.to_torch_state_dict(zeros, arch)
  assert len(state_dict) == num_tensors
  assert state_dict['fc.weight'].shape == (1000, 2048 if arch != 'resnet18' else 512)


def test_layouts_are_transposed(resnet18_state_dict):
  assert resnet18_state_dict['conv1.weight'].shape == (64, 3, 7, 7)  # OIHW
  assert resnet18_state_dict['layer2.0.downsample.0.weight'].shape == (128, 64, 1, 1)
  assert resnet18_state_dict['fc.weight'].shape == (10, 512)  # (out, in)
  model, variables = convert.from_torch(resnet18_state_dict, arch='resnet18')
  assert variables['params']['stem_conv']['kernel'].shape == (7, 7, 3, 64)  # HWIO
  assert variables['params']['head']['kernel'].shape == (512, 10)
  assert model.num_classes == 10
  np.testing.assert_array_equal(variables['params']['stem_conv']['kernel'][2, 5, 1, 7],
                                resnet18_state_dict['conv1.weight'][7, 1, 2, 5])


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_round_trip_is_exact(arch):
  variables = random_variables(arch, 7)
  _, converted = convert.from_torch(convert.to_torch_state_dict(variables, arch), arch=arch)
  assert_trees_equal(converted, variables)


def test_converted_model_runs(resnet18_state_dict):
  model, variables = convert.from_torch(resnet18_state_dict, arch='resnet18')
  logits = model.apply(variables, np.ones((2, 33, 33, 3), np.float32), train=False)
  assert logits.shape == (2, 10) and logits.dtype == np.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('wrap', [
    lambda sd: {'state_dict': sd, 'epoch': 3},
    lambda sd: {'model': sd, 'optimizer': {}},
    lambda sd: {f'module.{name}': value for name, value in sd.items()},
], ids=['state_dict', 'model', 'module-prefix'])
def test_checkpoint_wrappers_are_unwrapped(resnet18_state_dict, wrap):
  _, variables = convert.from_torch(resnet18_state_dict, arch='resnet18')
  _, unwrapped = convert.from_torch(wrap(resnet18_state_dict), arch='resnet18')
  assert_trees_equal(unwrapped, variables)


# ----------------------------------------------------------------------------- errors


def test_missing_tensor_is_named_with_its_shape(resnet18_state_dict):
  state_dict = dict(resnet18_state_dict)
  del state_dict['layer3.1.bn2.running_var']
  with pytest.raises(errors.ConversionError,
                     match=r'1 missing: layer3\.1\.bn2\.running_var \(expected shape \(256,\)\)$'):
    convert.from_torch(state_dict, arch='resnet18')


def test_extra_tensor_is_named(resnet18_state_dict):
  state_dict = dict(resnet18_state_dict, **{'layer1.0.se.fc1.weight': np.zeros((4, 64, 1, 1))})
  with pytest.raises(errors.ConversionError, match=r'1 unmapped: layer1\.0\.se\.fc1\.weight \(shape \(4, 64, 1, 1\)\)$'):
    convert.from_torch(state_dict, arch='resnet18')


def test_misshapen_tensor_is_named_with_both_shapes(resnet18_state_dict):
  state_dict = dict(resnet18_state_dict)
  state_dict['layer2.0.conv1.weight'] = np.zeros((128, 64, 1, 1), np.float32)
  with pytest.raises(errors.ConversionError,
                     match=r'1 misshapen: layer2\.0\.conv1\.weight \(shape \(128, 64, 1, 1\), '
                           r'expected \(128, 64, 3, 3\)\)'):
    convert.from_torch(state_dict, arch='resnet18')


def test_only_num_batches_tracked_is_dropped(resnet18_state_dict):
  bare = {name: value for name, value in resnet18_state_dict.items()
          if not name.endswith('num_batches_tracked')}
  _, with_counters = convert.from_torch(resnet18_state_dict, arch='resnet18')
  _, without_counters = convert.from_torch(bare, arch='resnet18')
  assert_trees_equal(with_counters, without_counters)


def test_wrong_architecture_lists_missing_and_misshapen_tensors(resnet18_state_dict):
  with pytest.raises(errors.ConversionError) as error:
    convert.from_torch(resnet18_state_dict, arch='resnet50')
  message = str(error.value)
  assert '\n' not in message
  # Tensors are listed in network order, the first few of each kind, the rest counted.
  assert re.search(r': 165 missing: layer1\.0\.bn3\.bias \(expected shape \(256,\)\), '
                   r'layer1\.0\.bn3\.running_mean .* and 157 more;', message)
  assert re.search(r'; 24 misshapen: layer1\.0\.conv1\.weight \(shape \(64, 64, 3, 3\), '
                   r'expected \(64, 64, 1, 1\)\), ', message)
  assert 'unmapped' not in message  # resnet18's names are a subset of resnet50's


def test_num_classes_must_match_the_head(resnet18_state_dict):
  assert convert.from_torch(resnet18_state_dict, arch='resnet18')[0].num_classes == 10
  with pytest.raises(errors.ConversionError,
                     match=r'2 misshapen: fc\.bias \(shape \(10,\), expected \(1000,\)\), '
                           r'fc\.weight \(shape \(10, 512\), expected \(1000, 512\)\)$'):
    convert.from_torch(resnet18_state_dict, arch='resnet18', num_classes=1000)


def test_headless_state_dict_needs_fc(resnet18_state_dict):
  headless = {name: value for name, value in resnet18_state_dict.items()
              if not name.startswith('fc.')}
  with pytest.raises(errors.ConversionError, match=r'missing fc\.weight'):
    convert.from_torch(headless, arch='resnet18')


@pytest.mark.parametrize('arch', [
    'resnet56', 'wrn_28_10', 'preact_resnet164',
    # ImageNet layouts whose tensors have torchvision's shapes but compute something else.
    dict(family='imagenet', depth=50, bottleneck_stride='first_1x1'),
    dict(family='imagenet', depth=18, norm='none'),
    dict(family='imagenet', depth=50, preact=True),
], ids=str)
def test_architectures_without_torchvision_counterpart_are_refused(arch):
  with pytest.raises(errors.ConversionError, match='no torchvision counterpart'):
    convert.model_config(arch)


# ----------------------------------------------------------------------------- files + CLI


def test_cli_converts_safetensors_without_torch(tmp_path, resnet18_state_dict):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  weights = tmp_path / 'resnet18.safetensors'
  safetensors_numpy.save_file(resnet18_state_dict, str(weights))
  out = tmp_path / 'converted'
  assert convert.main(['--arch=resnet18', f'--weights={weights}', f'--out={out}']) == 0

  config, num_classes, variables = convert.load_converted(out)
  model, expected = convert.from_torch(resnet18_state_dict, arch='resnet18')
  assert (config.depth, config.family, num_classes) == (18, 'imagenet', 10)
  assert_trees_equal(variables, expected)
  images = np.random.default_rng(0).standard_normal((2, 40, 40, 3)).astype(np.float32)
  np.testing.assert_array_equal(model.apply(variables, images, train=False),
                                model.apply(expected, images, train=False))


def test_cli_reports_a_bad_state_dict_in_one_line(tmp_path, resnet18_state_dict, capsys):
  weights = tmp_path / 'resnet18.npz'
  np.savez(weights, **resnet18_state_dict)
  status = convert.main(['--arch=resnet34', f'--weights={weights}', f'--out={tmp_path / "o"}',
                         '--num-classes', '10'])
  error = capsys.readouterr().err
  assert status == 1 and error.count('\n') == 1
  assert error.startswith('error: the state_dict does not fit resnet34: 80 missing: '
                          'layer1.2.bn1.bias (expected shape (64,)), ')
  assert not (tmp_path / 'o').exists()


def test_cli_refuses_to_overwrite(tmp_path, resnet18_state_dict):
  weights = tmp_path / 'resnet18.npz'
  np.savez(weights, **resnet18_state_dict)
  args = ['--arch=resnet18', f'--weights={weights}', f'--out={tmp_path / "o"}']
  assert convert.main(args) == 0
  assert convert.main(args) == 2


@pytest.mark.parametrize('name, content', [
    ('resnet18.safetensors', b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1'),
    ('resnet18.npz', b'PK\x03\x04 truncated zip'),
    ('resnet18.npz', b''),
])
def test_cli_reports_an_unreadable_weights_file_in_one_line(tmp_path, capsys, name, content):
  pytest.importorskip('safetensors.numpy')
  weights = tmp_path / name
  weights.write_bytes(content)
  status = convert.main(['--arch=resnet18', f'--weights={weights}', f'--out={tmp_path / "o"}'])
  error = capsys.readouterr().err
  assert status == 1 and error.count('\n') == 1, error
  assert error.startswith(f'error: cannot read weights file {weights} (')
  assert not (tmp_path / 'o').exists()


def test_a_damaged_converted_checkpoint_given_to_init_from_is_one_line(tmp_path,
                                                                        resnet18_state_dict):
  from resnet_jax import train
  config, num_classes, variables = convert.convert_state_dict(resnet18_state_dict, 'resnet18')
  convert.save_converted(tmp_path / 'weights', config, num_classes, variables)
  for path in (tmp_path / 'weights' / convert.VARIABLES_DIR).rglob('*'):
    if path.is_file() and path.stat().st_size > 1000:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy
  with pytest.raises(errors.ConfigError) as error:
    train.pretrained_variables(str(tmp_path / 'weights'))
  message = str(error.value)
  assert message.startswith(f"init_from='{tmp_path / 'weights'}' cannot be read (")
  assert message.endswith('; convert or train it again') and '\n' not in message


# ----------------------------------------------------------------------------- torchvision


def _import_model_definitions_only():
  """torchvision/models/resnet.py without torchvision's __init__ (whose C ops may not load).

  PyPI's torchvision wheels are CUDA builds; on a CPU-only torch their C extension fails
  to load and `import torchvision` dies registering `torchvision::nms`. The ResNet
  classes are pure torch.nn and need none of it, so stub the two package modules.
  """
  spec = importlib.util.find_spec('torchvision')
  root = spec.submodule_search_locations[0]
  for name in [name for name in sys.modules if name.split('.')[0] == 'torchvision']:
    del sys.modules[name]
  for name, folder in (('torchvision', root), ('torchvision.models', f'{root}/models')):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
  return importlib.import_module('torchvision.models.resnet')


@pytest.fixture(scope='module')
def torchvision_resnet():
  """The torchvision.models.resnet module: imported normally, or its definitions alone."""
  pytest.importorskip('torch')
  if importlib.util.find_spec('torchvision') is None:
    pytest.skip('torchvision is not installed')
  try:
    yield importlib.import_module('torchvision.models.resnet')
    return
  except ImportError as error:
    pytest.skip(f'torchvision does not import: {error}')
  except Exception:  # pylint: disable=broad-except  # the C-extension failure above
    pass
  module = _import_model_definitions_only()
  yield module
  for name in [name for name in sys.modules if name.split('.')[0] == 'torchvision']:
    del sys.modules[name]


def randomised_torchvision_net(resnet_module, arch: str, num_classes: int, seed: int):
  """A torchvision net in eval mode whose every weight and BN statistic is non-trivial.

  BN affine parameters are random; running statistics come from a train-mode pass over
  random images (momentum 1), then are perturbed a little, so that the eval-mode net
  neither is BN-free (mean 0, var 1) nor blows up: logits stay O(1), where a float32
  comparison at 1e-4 is meaningful.
  """
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  net = getattr(resnet_module, arch)(num_classes=num_classes)
  batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in batch_norms:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.2)
      bn.momentum = 1.0
    net.fc.bias.normal_(0.0, 0.2)
    net.train()
    net(torch.randn(8, 3, 64, 64))
    for bn in batch_norms:
      bn.running_mean.add_(0.05 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean))
      bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.9, 1.1))
  return net.eval()


def torch_logits(net, images_nchw: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return net(torch.from_numpy(images_nchw)).numpy()


@pytest.fixture(scope='module')
def converted_torchvision_net(torchvision_resnet):
  """arch -> (randomised torchvision net, converted model, variables), built once per arch."""
  cache = {}

  def build(arch: str):
    if arch not in cache:
      net = randomised_torchvision_net(torchvision_resnet, arch, num_classes=17, seed=0)
      cache[arch] = (net, *convert.from_torch(net.state_dict(), arch=arch))
    return cache[arch]

  return build


@pytest.mark.parametrize('arch, sizes', [('resnet18', (64, 97, 224)), ('resnet50', (64, 97)),
                                         ('wide_resnet50_2', (64, 97))])
def test_logits_match_torchvision(converted_torchvision_net, arch, sizes):
  net, model, variables = converted_torchvision_net(arch)
  assert model.num_classes == 17
  apply = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
  rng = np.random.default_rng(1)
  for size in sizes:
    images_nchw = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    expected = torch_logits(net, images_nchw)
    actual = np.asarray(apply(variables, images_nchw.transpose(0, 2, 3, 1)))
    assert expected.std() > 0.3  # the check is not comparing near-constants
    max_diff = np.abs(actual - expected).max()
    assert max_diff <= TOLERANCE, f'{arch} at {size}px: max abs diff {max_diff:.2e}'


def test_xla_same_padding_would_not_match(converted_torchvision_net, monkeypatch):
  """The trap the equivalence test guards: 'SAME' convolutions drift from torch on even sizes."""
  net, model, variables = converted_torchvision_net('resnet18')
  monkeypatch.setattr(resnet, '_symmetric_padding', lambda kernel_size: 'SAME')
  images_nchw = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
  same_padded = np.asarray(model.apply(variables, images_nchw.transpose(0, 2, 3, 1), train=False))
  assert np.abs(same_padded - torch_logits(net, images_nchw)).max() > 100 * TOLERANCE


def test_logits_match_torchvision_in_float64(converted_torchvision_net):
  """The mapping itself, free of float32 noise (which is ~5e-5 at resnet50's depth).

  Both frameworks run the same float32 weights in float64; only the model's final cast of
  the logits to float32 separates them, so the results agree to float32 rounding.
  """
  import torch  # pylint: disable=import-outside-toplevel
  net, model, variables = converted_torchvision_net('resnet50')
  images_nchw = np.random.default_rng(5).standard_normal((2, 3, 64, 64))
  with torch.no_grad():
    expected = copy.deepcopy(net).double()(torch.from_numpy(images_nchw)).numpy()
  with jax.enable_x64(True):
    model64 = model.clone(dtype=np.float64)
    variables64 = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables)
    apply = jax.jit(lambda variables, images: model64.apply(variables, images, train=False))
    actual = np.asarray(apply(variables64, images_nchw.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(actual, expected.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_exported_state_dict_loads_into_torchvision(torchvision_resnet):
  import torch  # pylint: disable=import-outside-toplevel
  variables = random_variables('resnet18', 5, seed=3)
  state_dict = convert.to_torch_state_dict(variables, 'resnet18')
  net = torchvision_resnet.resnet18(num_classes=5)
  net.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in state_dict.items()},
                      strict=True)
  for name, tensor in net.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(), state_dict[name], err_msg=name)


def test_cli_converts_a_pth_checkpoint(tmp_path, converted_torchvision_net):
  import torch  # pylint: disable=import-outside-toplevel
  net = converted_torchvision_net('resnet18')[0]
  weights = tmp_path / 'checkpoint.pth'
  torch.save({'state_dict': net.state_dict(), 'epoch': 90}, weights)
  out = tmp_path / 'converted'
  assert convert.main(['--arch=resnet18', f'--weights={weights}', f'--out={out}']) == 0

  config, num_classes, variables = convert.load_converted(out)
  model = presets.build_model(config, num_classes)
  images_nchw = np.random.default_rng(4).standard_normal((2, 3, 50, 50)).astype(np.float32)
  actual = np.asarray(model.apply(variables, images_nchw.transpose(0, 2, 3, 1), train=False))
  np.testing.assert_allclose(actual, torch_logits(net, images_nchw), rtol=0, atol=TOLERANCE)
