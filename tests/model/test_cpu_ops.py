"""The CPU forms of convolution, BatchNorm and max-pool compute what the plain ones do."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from resnet_jax import parallel
from resnet_jax.model import cpu_ops, presets, resnet


def xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def assert_close(actual, expected, rtol=2e-5, atol=2e-5):
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol, atol=atol),
               actual, expected)


@pytest.mark.parametrize('size, cin, cout, kernel, stride', [
    (8, 8, 16, 1, 1),  # pointwise: a matmul
    (8, 8, 16, 1, 2),  # strided projection shortcut
    (2, 8, 8, 3, 1),  # a 3x3 on a 2x2 map, where XLA swaps operands
    (4, 8, 16, 3, 2),  # ... and its strided predecessor (2x2 output)
    (1, 4, 4, 3, 1),
    (16, 3, 8, 7, 2),  # the ImageNet stem stays an XLA convolution
])
def test_convolution_and_its_gradients_match_xla(size, cin, cout, kernel, stride):
  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
  padding = ((kernel // 2, kernel // 2),) * 2
  ours = lambda x, w: cpu_ops.conv_general_dilated(x, w, (stride, stride), padding)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  assert_close(ours(x, w), xla_conv(x, w, (stride, stride), padding), rtol=1e-4, atol=1e-4)
  assert_close(jax.grad(loss(ours), (0, 1))(x, w),
               jax.grad(loss(lambda x, w: xla_conv(x, w, (stride, stride), padding)), (0, 1))(x, w),
               rtol=1e-4, atol=1e-4)


def test_max_pool_matches_nn_max_pool_with_ties_going_to_the_first_maximum():
  x = jnp.maximum(jax.random.normal(jax.random.key(0), (2, 9, 9, 3)), 0)  # ReLU: ties at 0
  x = x.at[0, 0, 0, 0].set(x[0, 0, 1, 0])  # and a tie between positive values
  reference = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  cotangent = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * cotangent))(x)
  np.testing.assert_array_equal(cpu_ops.max_pool(x), reference(x))
  ours, theirs = grad(cpu_ops.max_pool), grad(reference)
  np.testing.assert_array_equal(ours != 0, theirs != 0)  # the same pixels receive gradient
  assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_fusion_barrier_is_the_identity_for_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  loss = lambda barrier: lambda x: jnp.sum(jnp.sin(barrier(x) * x))
  np.testing.assert_array_equal(jax.jit(cpu_ops.fusion_barrier)(x), x)
  np.testing.assert_array_equal(jax.grad(loss(cpu_ops.fusion_barrier))(x),
                                jax.grad(loss(lambda v: v))(x))
  assert 'conditional' in jax.jit(cpu_ops.fusion_barrier).lower(x).compile().as_text()
  assert np.isnan(cpu_ops.fusion_barrier(x.at[0, 0, 0, 0].set(jnp.nan))).all()  # NaN stays NaN


def batch_norm_loss(module, variables, x, cotangent):
  y, updates = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  return jnp.sum(jnp.sin(y) * cotangent), updates


def perturbed_variables(x):
  variables = nn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)
  return jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(2), v.shape),
                      variables)


def test_batch_norm_matches_nn_batch_norm_in_training_and_evaluation():
  x = 3 * jax.random.normal(jax.random.key(0), (8, 5, 5, 6)) + 1
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  variables = perturbed_variables(x)
  ours, theirs = cpu_ops.BatchNorm(momentum=0.9), nn.BatchNorm(momentum=0.9)
  assert (jax.tree.structure(ours.init(jax.random.key(0), x, use_running_average=False)) ==
          jax.tree.structure(variables))
  value_and_grads = lambda module: jax.value_and_grad(
      lambda v, x: batch_norm_loss(module, v, x, cotangent), (0, 1), has_aux=True)(variables, x)
  assert_close(value_and_grads(ours), value_and_grads(theirs))
  assert_close(ours.apply(variables, x, use_running_average=True),
               theirs.apply(variables, x, use_running_average=True))


@pytest.mark.parametrize('axis_name', [parallel.DATA_AXIS, None])
def test_batch_norm_gradients_match_across_devices(axis_name):
  """Synced (global statistics) and per-device BatchNorm inside shard_map, as training runs."""
  mesh = parallel.data_mesh()
  x = 3 * jax.random.normal(jax.random.key(0), (2 * mesh.size, 3, 3, 4)) + 1
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  variables = perturbed_variables(x[:1])

  def grads(module):
    def local(variables, x, cotangent):
      (_, updates), grad = jax.value_and_grad(
          lambda v: batch_norm_loss(module, v, x, cotangent), has_aux=True)(variables)
      return lax.pmean(grad, parallel.DATA_AXIS), lax.pmean(updates, parallel.DATA_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                                 out_specs=P()))(variables, x, cotangent)

  assert_close(grads(cpu_ops.BatchNorm(axis_name=axis_name)),
               grads(nn.BatchNorm(axis_name=axis_name)))


@pytest.mark.parametrize('name, layout', [
    ('resnet20', {'scan_blocks': True}), ('preact_resnet164', {'scan_blocks': True}),
    ('resnet20', {'remat_blocks': True}),
    ('preact_resnet164', {'scan_blocks': True, 'remat_blocks': True})])
def test_scanned_or_recomputed_blocks_compute_the_same_network(name, layout):
  config = presets.preset(name)
  unrolled = presets.build_model(config, 10)
  config.update(layout)
  changed = presets.build_model(config, 10)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = unrolled.init(jax.random.key(1), x[:1], train=False)
  relayout = resnet.stack_repeated_blocks if config.scan_blocks else (lambda tree: tree)
  per_collection = lambda collections: {k: relayout(v) for k, v in collections.items()}
  assert (jax.tree.structure(per_collection(variables)) ==
          jax.tree.structure(jax.eval_shape(
              lambda: changed.init(jax.random.key(1), x[:1], train=False))))

  def loss(model, variables):
    def apply(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
      return jnp.sum(jnp.sin(logits)), updates
    return jax.value_and_grad(apply, has_aux=True)(variables['params'])

  (value, updates), grads = loss(unrolled, variables)
  (new_value, new_updates), new_grads = loss(changed, per_collection(variables))
  assert_close(new_value, value, rtol=1e-5, atol=1e-5)
  assert_close(new_updates, per_collection(updates), rtol=1e-5, atol=1e-5)
  assert_close(new_grads, relayout(grads), rtol=1e-3, atol=1e-4)
