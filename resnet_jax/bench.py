"""`--mode=bench`: the real jitted train step, timed on synthetic data.

  python launch.py --config=configs/wrn.py --mode=bench [--config.batch_size=64]
      [--config.half_precision=true] [--config.bench_steps=20] [--config.bench_warmup_steps=3]

The step is the one `train_and_evaluate` runs (augmentation, forward, backward, gradient
all-reduce, SGD update), built the same way over every device, fed a fixed batch of random
uint8 images shaped like the config's dataset; nothing is read from disk. Printed:

* img/s and seconds per step, over `bench_steps` steps after `bench_warmup_steps`;
* compile time (trace + lower, and XLA compile, which the persistent cache shortens);
* peak memory: the device allocator's peak on GPU/TPU; on CPU the process's peak RSS;
* FLOPs per step from XLA's cost analysis (a multiply-add counts 2). Under `shard_map` the
  program is one device's share, so it is multiplied by the device count. On CPU, where
  `model.cpu_ops` runs small-map convolutions as matmuls that also multiply their zero padding,
  the model's count comes from the same step traced with XLA convolutions
  (`executed_flops_per_step` is the compiled program's own count);
* MFU = achieved FLOP/s / peak FLOP/s. Accelerators: the published dense peak of the
  device kind for the compute dtype (bf16 with half_precision, else what float32 matmuls
  run as: TF32 on Ampere and later GPUs, bf16 passes on TPU) times the device count. CPU,
  or an unknown device: a large matmul in the compute dtype, timed in the same run.

The last line is one JSON object (img_per_s, step_time_s, compile_s, peak_memory_bytes,
flops_per_step, mfu, device, ...).
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import optim, parallel, train
from resnet_jax.data import registry
from resnet_jax.errors import ConfigError
from resnet_jax.model import model_name, plain_xla

DEFAULT_WARMUP_STEPS = 2
DEFAULT_STEPS = 10
_SYNTHETIC_MEAN, _SYNTHETIC_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

# Published dense (no sparsity) peak TFLOP/s per device: (device_kind substring, bf16, fp32
# as XLA runs a float32 matmul by default). First match wins, so specific names come first.
PEAK_TFLOPS = (
    ('H100 PCIe', 756.0, 378.0),  # fp32 column: TF32
    ('H100', 989.0, 495.0),  # SXM / HBM3; TF32
    ('H200', 989.0, 495.0),
    ('H20', 148.0, 74.0),
    ('GH200', 989.0, 495.0),
    ('B200', 2250.0, 1100.0),
    ('A100', 312.0, 156.0),  # TF32
    ('A10G', 70.0, 35.0),
    ('A10', 125.0, 62.5),
    ('L40S', 362.0, 183.0),
    ('L4', 121.0, 60.0),
    ('V100', 125.0, 15.7),  # fp16 tensor cores (no bf16); fp32 on CUDA cores
    ('T4', 65.0, 8.1),  # fp16
    ('TPU v6', 918.0, 918.0),  # TPU float32 matmuls default to one bf16 pass
    ('TPU v5p', 459.0, 459.0),
    ('TPU v5', 197.0, 197.0),  # v5e / v5 lite
    ('TPU v4', 275.0, 275.0),
    ('TPU v3', 123.0, 123.0),
)


def num_classes(dataset_config) -> int:
  """Classes of the config's dataset, without reading it: its row's, else num_classes, else 10."""
  known = registry.lookup(dataset_config).num_classes
  if known is not None:
    return known
  return dataset_config.num_classes if dataset_config.get('num_classes', -1) > 0 else 10


def synthetic_batch(config, mesh, classes: int, seed: int = 0) -> dict:
  """A global batch of random uint8 images and labels, split over the 'data' axis."""
  rng = np.random.default_rng(seed)
  size = config.dataset.image_size
  batch = {
      'images': rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8),
      'labels': rng.integers(0, classes, (config.batch_size,), dtype=np.int32),
  }
  return parallel.put(batch, parallel.batch_sharded(mesh))


def published_peak_flops(device_kind: str, half_precision: bool) -> float | None:
  """The dense peak FLOP/s of one device of this kind, or None when not in the table."""
  for name, bf16, fp32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return (bf16 if half_precision else fp32) * 1e12
  return None


def measured_matmul_flops(dtype, size: int = 1536, repeats: int = 10) -> float:
  """FLOP/s of the best of `repeats` size x size matmuls on the default device."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def peak_flops(half_precision: bool) -> tuple[float, str]:
  """(peak FLOP/s of all devices together, how it was obtained)."""
  device = jax.devices()[0]
  dtype_name = 'bf16' if half_precision else 'fp32'
  if device.platform != 'cpu':
    per_device = published_peak_flops(device.device_kind, half_precision)
    if per_device is not None:
      return per_device * jax.device_count(), (
          f'published dense {dtype_name} peak of {device.device_kind}: '
          f'{per_device / 1e12:g} TFLOP/s x {jax.device_count()} device(s)')
  # Simulated CPU devices share one process's cores, so the machine's peak is measured
  # once per process (host).
  measured = measured_matmul_flops(jnp.bfloat16 if half_precision else jnp.float32)
  where = 'CPU' if device.platform == 'cpu' else f'{device.device_kind} (not in the table)'
  return measured * jax.process_count(), (
      f'{dtype_name} 1536x1536 matmul (best of 10) measured in this run on the {where}: '
      f'{measured / 1e9:.1f} GFLOP/s' + (f' x {jax.process_count()} hosts'
                                         if jax.process_count() > 1 else ''))


def peak_memory() -> tuple[int, str]:
  """(bytes, what they are): the largest device allocator peak, or the process peak RSS."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  if peaks:
    return max(peaks), 'device peak_bytes_in_use (largest over local devices)'
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, \
      'process peak RSS (CPU has no device allocator statistics)'


def _cost(compiled_or_lowered) -> dict[str, float]:
  try:
    cost = compiled_or_lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return dict(cost or {})


def build_step(config, mesh, classes: int, *, abstract_state: bool = False):
  """(model, jitted train step, fresh state) exactly as `train_and_evaluate` builds them.

  With `abstract_state`, the state is only its shapes (nothing is initialised), enough to
  lower the step.
  """
  model = train.make_model(config, classes)
  steps_per_epoch, total_steps = 1000, 100_000  # only the schedule's shape depends on them
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps)
  multiplier = optim.lr_multiplier(config, steps_per_epoch, total_steps)
  local_step = train.make_local_train_step(model, tx, multiplier, config, _SYNTHETIC_MEAN,
                                           _SYNTHETIC_STD, classes)
  step = train.make_train_step(local_step, mesh)
  init = lambda: train.create_train_state(model, tx, config, mesh, config.dataset.image_size)
  if not abstract_state:
    return model, step, init()
  replicated = parallel.replicated(mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                       jax.eval_shape(init))
  return model, step, state


def model_flops(config, mesh, classes: int, arrays, batch) -> float:
  """The train step's FLOPs as XLA counts them on the unrolled network with XLA convolutions.

  XLA counts a scanned stage's loop body once, and the matmul form of small-map
  convolutions (model/cpu_ops.py, on CPU) multiplies their zero padding too; so the step is
  traced again without either, and lowered only. One device's program x devices.
  """
  plain = config.copy_and_resolve_references()
  with plain.unlocked():
    plain.model.scan_blocks = False
  with plain_xla():
    _, step, state = build_step(plain, mesh, classes, abstract_state=True)
    return _cost(step.lower(state, arrays, batch)).get('flops', 0.0) * mesh.size


def measure(config) -> dict[str, Any]:
  """Compiles and times the train step; returns the figures `run` prints."""
  mesh = parallel.data_mesh()
  parallel.check_divisible(config.batch_size, 'batch_size', mesh)
  classes = num_classes(config.dataset)
  warmup = int(config.get('bench_warmup_steps', DEFAULT_WARMUP_STEPS))
  steps = int(config.get('bench_steps', DEFAULT_STEPS))
  if steps < 1 or warmup < 0:
    raise ConfigError(f'bench_steps={steps} must be >= 1 and bench_warmup_steps='
                              f'{warmup} >= 0')

  model, step, state = build_step(config, mesh, classes)
  arrays, batch = {}, synthetic_batch(config, mesh, classes, config.seed)

  start = time.perf_counter()
  lowered = step.lower(state, arrays, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  xla_compile_s = time.perf_counter() - start

  for _ in range(warmup):
    state, metrics = compiled(state, arrays, batch)
  jax.block_until_ready((state, metrics) if warmup else state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, arrays, batch)
  jax.block_until_ready((state, metrics))
  step_time = (time.perf_counter() - start) / steps
  loss = float(jax.device_get(metrics['loss']))

  # XLA's cost analysis is of one device's program.
  executed_flops = (_cost(compiled).get('flops', 0.0) or _cost(lowered).get('flops', 0.0))
  executed_flops *= mesh.size
  if model.ops.name == 'cpu' or config.model.get('scan_blocks', False):
    flops_per_step = model_flops(config, mesh, classes, arrays, batch)
  else:
    flops_per_step = executed_flops
  peak, peak_source = peak_flops(config.half_precision)
  memory, memory_source = peak_memory()
  try:
    analysis = compiled.memory_analysis()
    step_bytes = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes +
                     analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    step_bytes = None

  device = jax.devices()[0]
  achieved = flops_per_step / step_time
  return {
      'model': model_name(config.model),
      'batch_size': config.batch_size,
      'image_size': config.dataset.image_size,
      'dtype': 'bfloat16' if config.half_precision else 'float32',
      'devices': mesh.size,
      'device': f'{mesh.size} x {device.device_kind}',
      'platform': device.platform,
      'img_per_s': config.batch_size / step_time,
      'step_time_s': step_time,
      'compile_s': lower_s + xla_compile_s,
      'trace_lower_s': lower_s,
      'xla_compile_s': xla_compile_s,
      'peak_memory_bytes': memory,
      'peak_memory_kind': memory_source,
      'xla_step_memory_bytes': step_bytes,
      'flops_per_step': flops_per_step,
      'executed_flops_per_step': executed_flops,
      'achieved_flops_per_s': achieved,
      'peak_flops_per_s': peak,
      'peak_flops_source': peak_source,
      'mfu': achieved / peak if peak else None,
      'warmup_steps': warmup,
      'timed_steps': steps,
      'loss': loss,
      'jax': jax.__version__,
  }


def format_report(result: dict[str, Any]) -> str:
  gib = 2.0 ** 30
  memory = result['peak_memory_bytes'] / gib
  lines = [
      f'bench {result["model"]} | batch {result["batch_size"]} | '
      f'{result["image_size"]} px | {result["dtype"]} | {result["device"]}',
      f'  throughput  {result["img_per_s"]:,.1f} img/s   ({result["step_time_s"] * 1e3:,.1f} ms '
      f'per step, mean of {result["timed_steps"]} after {result["warmup_steps"]} warm-up)',
      f'  compile     {result["compile_s"]:.2f} s   (trace+lower {result["trace_lower_s"]:.2f} s,'
      f' XLA compile {result["xla_compile_s"]:.2f} s)',
      f'  memory      {memory:.2f} GiB   ({result["peak_memory_kind"]})',
      f'  FLOPs       {result["flops_per_step"] / 1e9:,.1f} GFLOP per step   (XLA cost '
      f'analysis, one device\'s program x {result["devices"]}; executed '
      f'{result["executed_flops_per_step"] / 1e9:,.1f})',
      f'  achieved    {result["achieved_flops_per_s"] / 1e9:,.1f} GFLOP/s',
      f'  MFU         {result["mfu"]:.1%}   (peak: {result["peak_flops_source"]})'
      if result['mfu'] is not None else '  MFU         n/a',
  ]
  return '\n'.join(lines)


def run(config) -> dict[str, Any]:
  """Measures, prints the report, and prints the figures as one JSON line (last)."""
  result = measure(config)
  if jax.process_index() == 0:
    print(format_report(result), flush=True)
    print(json.dumps(result), flush=True)
  return result
