"""The convolution, BatchNorm, max-pool and fusion barrier a `ResNet` is built from, as
one `Ops` value: the plain XLA/Flax operations (`XLA`), or their forms for XLA:CPU (`CPU`).

Each CPU form computes exactly what `lax.conv_general_dilated`, `nn.BatchNorm` and `nn.max_pool`
compute, with the same parameters and statistics (so checkpoints, presets and the
torchvision converter see no difference), but is written so that XLA:CPU runs it fast.
Measured on a 2-core CPU (benchmarks/RESULTS.md):

* `conv_general_dilated`: on CPU, 1x1 convolutions and convolutions whose map is smaller
  than the kernel become one matmul. XLA:CPU runs the backward pass of a 1x1 convolution
  at ~20 GFLOP/s against ~150 as a matmul, and lowers a 3x3 convolution on a 2x2 map
  (ResNet-18/50's last stage below 96 px) to a naive loop after swapping its operands:
  ~1 GFLOP/s, a second per layer. With all three, ResNet-18 at 64 px trains 8.5x faster
  (23 -> 197 img/s) and ResNet-50 at 128 px 1.7x (14.7 -> 25.3 img/s).
* `BatchNorm`: in training mode the normalisation has a hand-written gradient that needs
  two per-channel sums and one elementwise pass, instead of what autodiff builds through
  mean, variance and rsqrt (~10% of a CIFAR ResNet's step on CPU).
* `max_pool`: on CPU the gradient is written out with the windows' strided views; XLA:CPU
  expands select-and-scatter into a (value, index) reduce-window and a scatter (~10% of
  ResNet-18/50's step).
* `fusion_barrier`: each residual block's input is read from memory instead of being
  recomputed, back to the stem, inside every backward transpose (ResNet-56 1.9x, -110 3.3x).

`for_backend()` chooses once, when `model.presets.build_model` builds the net: `CPU` on
the CPU backend, `XLA` elsewhere (GPUs and TPUs run the plain operations and `nn.BatchNorm`,
not measured against these forms: no GPU has been available), and `XLA` inside
`plain_xla()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


_plain = threading.local()


@contextlib.contextmanager
def plain_xla():
  """Models built inside use the plain XLA operations and nn.BatchNorm on every backend.

  For reference figures: XLA's FLOP count of a matmul-lowered convolution includes the
  zero padding it multiplies, that of the convolution does not.
  """
  previous = getattr(_plain, 'active', False)
  _plain.active = True
  try:
    yield
  finally:
    _plain.active = previous


def _as_varying_like(x, *values):
  """Inside shard_map, marks replicated `values` as varying over x's axes.

  A custom gradient must return per-device cotangents for them; the implicit conversion
  autodiff would insert otherwise (and its transpose, a psum) is made explicit here.
  """
  extra = tuple(_varying_axes(x) - _varying_axes(values[0]))
  return tuple(lax.pcast(v, extra, to='varying') for v in values) if extra else values


def _varying_axes(x) -> frozenset:
  """The shard_map axes x varies over (`manual_axis_type.varying`; `vma` before jax 0.10)."""
  aval = jax.typeof(x)
  manual = getattr(aval, 'manual_axis_type', None)
  return frozenset(manual.varying if manual is not None else getattr(aval, 'vma', ()))


# ----------------------------------------------------------------------------- convolution


def _matmul_conv(x, kernel, strides, padding):
  """An NHWC x HWIO convolution as one matmul over the kernel's strided views of the input.

  The same sum as the convolution, in another order; its gradient is two matmuls plus
  pads and slices.
  """
  kh, kw, cin, cout = kernel.shape
  (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
  if pt or pb or pl or pr:
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  taps = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout),
              preferred_element_type=x.dtype)
  return y.reshape(n, ho, wo, cout)


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding)


def _canonical_conv_forward(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _canonical_conv_backward(strides, padding, residuals, dy):
  """Both gradients as NHWC x HWIO convolutions of explicitly transposed operands.

  They are what XLA's layout assignment builds from autodiff's convolutions in a program's
  main computation; inside a loop body (a scan over blocks) XLA:CPU leaves them in
  non-canonical layouts and runs them as naive loops.
  """
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  spatial = list(zip(x.shape[1:3], dy.shape[1:3], (kh, kw), strides, padding))
  # dx: the output gradient, dilated by the stride, against the flipped, transposed kernel.
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  dx_padding = [(k - 1 - lo, size - (out - 1) * s - 1 + lo)
                for size, out, k, s, (lo, _) in spatial]
  dx = lax.conv_general_dilated(dy, flipped, (1, 1), dx_padding, lhs_dilation=strides,
                                dimension_numbers=_NHWC)
  # dkernel: channels as the batch, the batch as the contracted feature dimension.
  dw_padding = [(lo, k + (out - 1) * s - size - lo) for size, out, k, s, (lo, _) in spatial]
  dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)),
                                (1, 1), dw_padding, rhs_dilation=strides, dimension_numbers=_NHWC)
  return dx, jnp.transpose(dw, (1, 2, 0, 3))


_canonical_conv.defvjp(_canonical_conv_forward, _canonical_conv_backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels (`nn.Conv`'s layout).

  1x1 convolutions and those whose input or output map has fewer pixels than the kernel
  (where XLA:CPU would swap the operands) run as a matmul, the others with an explicit
  backward pass.
  """
  kh, kw = rhs.shape[0], rhs.shape[1]
  plain = (lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)) and
           feature_group_count == 1 and precision is None and not isinstance(padding, str))
  if plain:
    (pt, pb), (pl, pr) = padding
    ho = (lhs.shape[1] + pt + pb - kh) // window_strides[0] + 1
    wo = (lhs.shape[2] + pl + pr - kw) // window_strides[1] + 1
    pointwise = kh == kw == 1 and not (pt or pb or pl or pr)
    smaller_than_kernel = kh * kw > min(lhs.shape[1] * lhs.shape[2], ho * wo)
    if pointwise or smaller_than_kernel:
      return _matmul_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))
    if lhs.ndim == 4:
      (rhs,) = _as_varying_like(lhs, rhs)
      return _canonical_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision)


# ----------------------------------------------------------------------------- fusion barrier


def fusion_barrier(x):
  """x, computed once and then read from memory by every user.

  Between residual blocks: XLA:CPU otherwise fuses the residual stream's producers (BN,
  add, ReLU: cheap elementwise ops) into each backward transpose that reads a block's
  input, and since those producers read the previous block's output, it recomputes the
  whole stream back to the stem for every block: quadratic in depth (ResNet-56, batch 128:
  1.67 s a step, 60% of it there; 0.89 s with the barrier). `lax.optimization_barrier` is
  expanded away before fusion on CPU; a conditional on a runtime value cannot be fused
  through. Its other branch only runs when x is already NaN, and then fills x with NaN.
  """
  finite = ~jnp.isnan(x[(0,) * x.ndim])
  return lax.cond(finite, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), x)


# ----------------------------------------------------------------------------- batch norm


def _channel_sum(v):
  return jnp.sum(v, axis=tuple(range(v.ndim - 1)))


def _statistics_dtype(x):
  """At least float32, as nn.BatchNorm computes (float64 when x is)."""
  return jnp.promote_types(jnp.float32, x.dtype)


def _count(x, axis_name):
  count = x.size // x.shape[-1]
  return count * lax.psum(1, axis_name) if axis_name is not None else count


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
  """(y, mean, var) and what the gradient needs; statistics in float32, as nn.BatchNorm."""
  xf = x.astype(_statistics_dtype(x))
  sums = jnp.stack([_channel_sum(xf), _channel_sum(xf * xf)])
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  count = _count(x, axis_name)
  mean = sums[0] / count
  var = jnp.maximum(0.0, sums[1] / count - mean * mean)  # nn.BatchNorm's fast variance
  rstd = lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (scale * rstd) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, rstd, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, epsilon, axis_name):
  return _batch_norm_forward(x, scale, bias, epsilon, axis_name)[0]


def _batch_norm_backward(epsilon, axis_name, residuals, cotangents):
  """With xhat = (x - mean) * rstd over M values (all devices when synced):

  dbias = sum g, dscale = sum g * xhat (this device's share; the caller's cast to
  varying sums them), and dx = scale * rstd * (g - sum g / M - xhat * sum g xhat / M),
  plus the cotangents of the returned mean and var, all one affine map of (g, x).
  """
  del epsilon
  x, mean, rstd, scale = residuals
  g_y, g_mean, g_var = cotangents
  xf, g = x.astype(_statistics_dtype(x)), g_y.astype(_statistics_dtype(x))
  sum_g = _channel_sum(g)
  sum_g_xhat = (_channel_sum(g * xf) - mean * sum_g) * rstd
  d_bias, d_scale = sum_g, sum_g_xhat
  if axis_name is not None:
    sum_g, sum_g_xhat = lax.psum(jnp.stack([sum_g, sum_g_xhat]), axis_name)
  count = _count(x, axis_name)
  a = scale * rstd
  k_x = -a * rstd * sum_g_xhat / count + 2.0 * g_var / count
  k_0 = (g_mean - a * sum_g) / count - k_x * mean
  d_x = (g * a + xf * k_x + k_0).astype(x.dtype)
  return d_x, d_scale, d_bias


_batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis: the same parameters (scale, bias), statistics
  (mean, var, biased variance as Flax keeps it), momentum convention and results.

  Only the subset of nn.BatchNorm's options the ResNet uses exists here.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)
    dtype = self.dtype or jnp.promote_types(x.dtype, self.param_dtype)
    if use_running_average:
      mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((x.astype(_statistics_dtype(x)) - ra_mean.value) * mul + bias).astype(dtype)
    x = x.astype(dtype)
    y, mean, var = _batch_norm_train(x, *_as_varying_like(x, scale, bias), self.epsilon,
                                     self.axis_name)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


# ----------------------------------------------------------------------------- max-pool


def _window_views(x, window: int, stride: int, out_hw: tuple[int, int]):
  """The window x window strided views of an NHWC map, in row-major window order."""
  ho, wo = out_hw
  return [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
          for i in range(window) for j in range(window)]


def _view_max_pool_forward(x, window, stride, padding):
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   constant_values=-jnp.inf)
  ho = (padded.shape[1] - window) // stride + 1
  wo = (padded.shape[2] - window) // stride + 1
  y = functools.reduce(jnp.maximum, _window_views(padded, window, stride, (ho, wo)))
  return y, (padded, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _view_max_pool(x, window: int, stride: int, padding: int):
  return _view_max_pool_forward(x, window, stride, padding)[0]


def _view_max_pool_backward(window, stride, padding, residuals, g):
  """Each window's first maximum in row-major order takes its gradient, as in XLA."""
  padded, y = residuals
  _, hp, wp, _ = padded.shape
  ho, wo = y.shape[1], y.shape[2]
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros(padded.shape, g.dtype)
  for index, view in enumerate(_window_views(padded, window, stride, (ho, wo))):
    i, j = divmod(index, window)
    first = (view == y) & ~taken
    taken = taken | first
    grad = grad + lax.pad(jnp.where(first, g, zero), zero, (
        (0, 0, 0), (i, hp - i - stride * (ho - 1) - 1, stride - 1),
        (j, wp - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
  return (grad[:, padding:hp - padding, padding:wp - padding, :],)


_view_max_pool.defvjp(_view_max_pool_forward, _view_max_pool_backward)


def max_pool(x, window: int = 3, stride: int = 2, padding: int = 1):
  """Square max-pooling of an NHWC map with symmetric -inf padding (nn.max_pool, torch)."""
  return _view_max_pool(x, window, stride, padding)


def xla_max_pool(x, window: int = 3, stride: int = 2, padding: int = 1):
  """`max_pool` as nn.max_pool computes it."""
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


# ----------------------------------------------------------------------------- the choice


@dataclasses.dataclass(frozen=True)
class Ops:
  """The operations a ResNet is built from; every choice gives the same values."""
  name: str  # 'xla' | 'cpu'
  conv_general_dilated: Callable  # nn.Conv's conv_general_dilated
  batch_norm: Callable[..., nn.Module]  # nn.BatchNorm's constructor and variables
  max_pool: Callable  # (x, window, stride, padding) -> NHWC map
  fusion_barrier: Callable  # x -> x, between residual blocks in training


XLA = Ops('xla', lax.conv_general_dilated, nn.BatchNorm, xla_max_pool, lambda x: x)
CPU = Ops('cpu', conv_general_dilated, BatchNorm, max_pool, fusion_barrier)


def for_backend() -> Ops:
  """`CPU` on the CPU backend, outside `plain_xla()`; `XLA` everywhere else."""
  return CPU if jax.default_backend() == 'cpu' and not getattr(_plain, 'active', False) else XLA
