"""MetricWriter files, and the Progress line a researcher watches."""

from __future__ import annotations

import io
import json
import math
import pathlib
import struct

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax.metrics import (
    MetricWriter, Progress, format_duration, to_json_scalar)


def read_jsonl(workdir: pathlib.Path) -> list[dict]:
  """Strict JSON: NaN/Infinity tokens would raise here."""
  def reject(token):
    raise ValueError(f'not strict JSON: {token}')
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line, parse_constant=reject) for line in lines]


def read_tensorboard_scalars(workdir: pathlib.Path) -> list[tuple[str, int, float]]:
  """(tag, step, value) from every event file, checking the TFRecord framing.

  A record is: uint64 length, masked CRC-32C of the length bytes, the
  serialized Event proto, masked CRC-32C of the proto bytes.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
  scalars = []
  for path in sorted((workdir / 'tensorboard').glob('events.out.tfevents.*')):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack('<Q', header)
      (header_crc,) = struct.unpack('<I', data[offset + 8:offset + 12])
      assert header_crc == masked_crc32c(header)
      payload = data[offset + 12:offset + 12 + length]
      (payload_crc,) = struct.unpack(
          '<I', data[offset + 12 + length:offset + 16 + length])
      assert payload_crc == masked_crc32c(payload)
      offset += 16 + length
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


# --------------------------------------------------------------- MetricWriter


def test_each_write_appends_one_json_line_and_a_resumed_run_keeps_them(tmp_path):
  with MetricWriter(tmp_path) as writer:
    assert not (tmp_path / 'metrics.jsonl').exists()  # Created by the first write.
    writer.write(1, {'train/loss': 2.5, 'train/lr': 0.1})
    writer.write(2, {'train/loss': 2.0, 'train/lr': 0.1})
    # Flushed: readable while the writer is still open.
    assert len(read_jsonl(tmp_path)) == 2

  with MetricWriter(tmp_path) as resumed:  # A restart appends.
    resumed.write(3, {'eval/accuracy': 0.5})

  records = read_jsonl(tmp_path)
  assert [r['step'] for r in records] == [1, 2, 3]
  assert records[0]['train/loss'] == 2.5 and records[2]['eval/accuracy'] == 0.5
  assert all(isinstance(r['time'], float) for r in records)
  assert records[0]['time'] <= records[2]['time']


def test_numpy_and_jax_scalars_become_python_numbers(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(np.int64(4), {
        'np_float': np.float32(0.25),
        'np_int': np.int32(7),
        'jax_float': jnp.asarray(1.5),
        'jax_int': jnp.asarray(3, jnp.int32),
        'one_element': np.array([2.0]),
        'flag': np.bool_(True),
    })
  (record,) = read_jsonl(tmp_path)
  assert record['step'] == 4
  assert record['np_float'] == 0.25 and isinstance(record['np_float'], float)
  assert record['np_int'] == 7 and isinstance(record['np_int'], int)
  assert record['jax_float'] == 1.5 and record['jax_int'] == 3
  assert record['one_element'] == 2.0 and record['flag'] is True


def test_nan_and_inf_are_written_as_null(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(1, {'loss': float('nan'), 'grad_norm': np.float32('inf'),
                     'neg': -math.inf, 'ok': 1.0})
  (record,) = read_jsonl(tmp_path)  # Strict JSON parse.
  assert record == {'step': 1, 'time': record['time'], 'loss': None,
                    'grad_norm': None, 'neg': None, 'ok': 1.0}
  # TensorBoard keeps the real value.
  values = {tag: v for tag, _, v in read_tensorboard_scalars(tmp_path)}
  assert math.isnan(values['loss']) and values['grad_norm'] == math.inf


def test_bad_metrics_are_rejected_before_anything_is_written(tmp_path):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match='numeric scalar'):
      writer.write(1, {'ok': 1.0, 'vector': np.ones(3)})
    with pytest.raises(TypeError, match='numeric scalar'):
      writer.write(1, {'name': 'resnet'})
    with pytest.raises(ValueError, match='reserved'):
      writer.write(1, {'step': 5})
  assert not (tmp_path / 'metrics.jsonl').exists()


def test_write_after_close_is_an_error(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.close()
  with pytest.raises(RuntimeError, match='after close'):
    writer.write(1, {'loss': 1.0})


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(10, {'train/loss': 0.75, 'train/lr': np.float32(0.1)})
    writer.write(20, {'train/loss': 0.5})

  scalars = read_tensorboard_scalars(tmp_path)
  assert sorted(scalars) == sorted([
      ('train/loss', 10, 0.75), ('train/lr', 10, pytest.approx(0.1)),
      ('train/loss', 20, 0.5)])


def test_two_writers_in_the_same_second_keep_both_event_files(tmp_path):
  with MetricWriter(tmp_path) as first:
    first.write(1, {'loss': 1.0})
  with MetricWriter(tmp_path) as second:
    second.write(2, {'loss': 0.5})
  assert len(list((tmp_path / 'tensorboard').iterdir())) == 2
  assert sorted(read_tensorboard_scalars(tmp_path)) == [
      ('loss', 1, 1.0), ('loss', 2, 0.5)]


def test_disabled_writer_touches_nothing(tmp_path):
  workdir = tmp_path / 'other_process'
  with MetricWriter(workdir, enabled=False) as writer:
    writer.write(1, {'loss': 1.0})
    writer.write_config({'a': 1})
  assert not workdir.exists()


def test_write_config_is_pretty_printed_json(tmp_path):
  config = ml_collections.ConfigDict({
      'model': {'name': 'wrn_28_10', 'dropout': 0.3},
      'optimizer': {'lr': 0.1, 'milestones': (60, 120, 160)},
  })
  with MetricWriter(tmp_path) as writer:
    writer.write_config(config)
  text = (tmp_path / 'config.json').read_text()
  assert '\n  "model": {' in text  # Indented, keys sorted.
  assert json.loads(text) == {
      'model': {'dropout': 0.3, 'name': 'wrn_28_10'},
      'optimizer': {'lr': 0.1, 'milestones': [60, 120, 160]},
  }


def test_write_config_accepts_a_plain_dict(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_config({'seed': 0, 'workdir': pathlib.Path('/tmp/x')})
  assert json.loads((tmp_path / 'config.json').read_text()) == {
      'seed': 0, 'workdir': "PosixPath('/tmp/x')"}


@pytest.mark.parametrize('value, expected', [
    (np.float64(0.5), 0.5), (jnp.float32(2.0), 2.0), (np.int8(-3), -3),
    (float('nan'), None), (True, True), (7, 7)])
def test_to_json_scalar(value, expected):
  assert to_json_scalar(value) == expected


# ------------------------------------------------------------------- Progress


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class FakeTerminal(io.StringIO):
  def isatty(self) -> bool:
    return True


@pytest.mark.parametrize('seconds, text', [
    (0, '0s'), (45.4, '45s'), (59.6, '1m00s'), (754, '12m34s'),
    (3 * 3600 + 5 * 60 + 9, '3h05m'), (2 * 86400 + 4 * 3600, '2d04h'),
    (-3, '0s'), (None, '--'), (math.inf, '--'), (math.nan, '--')])
def test_format_duration(seconds, text):
  assert format_duration(seconds) == text


def test_progress_line_matches_the_documented_format():
  clock, stream = FakeClock(), io.StringIO()
  progress = Progress(78200, global_batch=128, steps_per_epoch=390,
                      stream=stream, clock=clock)
  progress.update(1100, loss=0.9, lr=0.1, img_per_s=10_000)
  clock.now += 100 * 754 / 77_000  # 100 steps at the pace of 77,000 in 754 s.
  line = progress.update(1200, loss=0.81234, lr=0.1, img_per_s=10_234.4)

  assert line == ('step 1200/78200 | epoch 3.08 | 10,234 img/s | loss 0.8123 '
                  '| lr 0.1000 | ETA 12m34s')
  # Not a terminal: one full line per update.
  assert stream.getvalue().splitlines()[-1] == line
  assert stream.getvalue().count('\n') == 2


def test_eta_ignores_the_time_before_the_first_update():
  """Compilation happens before the first update and must not slow the ETA."""
  clock = FakeClock()
  progress = Progress(1000, 128, 100, stream=io.StringIO(), clock=clock)
  clock.now = 120.0  # Two minutes of compiling the first step.
  first = progress.update(1, loss=1.0, lr=0.1, img_per_s=0)
  assert first.endswith('ETA --')  # No rate known yet.
  clock.now += 10.0
  progress.update(101, loss=1.0, lr=0.1, img_per_s=0)  # 10 steps/s.
  assert progress.eta_seconds() == pytest.approx(89.9)


def test_eta_follows_the_recent_rate():
  clock = FakeClock()
  progress = Progress(10_000, 128, 100, stream=io.StringIO(), clock=clock,
                      window=3)
  step = 0
  for seconds_per_100_steps in (100, 100, 100, 10, 10):  # Speeds up 10x.
    progress.update(step, loss=1.0, lr=0.1)
    clock.now += seconds_per_100_steps
    step += 100
  progress.update(step, loss=1.0, lr=0.1)
  # The window (last 3 updates) only saw the fast pace: 10 steps/s.
  assert progress.steps_per_second() == pytest.approx(10.0)
  assert progress.eta_seconds() == pytest.approx((10_000 - 500) / 10)


def test_img_per_s_defaults_to_the_measured_rate():
  clock = FakeClock()
  progress = Progress(1000, 256, 100, stream=io.StringIO(), clock=clock)
  assert '| -- img/s |' in progress.update(0, loss=1.0, lr=0.1)
  clock.now = 2.0
  assert '| 12,800 img/s |' in progress.update(100, loss=1.0, lr=0.1)


def test_small_learning_rates_stay_readable():
  progress = Progress(10, 1, 1, stream=io.StringIO())
  assert '| lr 2.50e-05 |' in progress.update(1, loss=1.0, lr=2.5e-5)
  assert '| lr 0.0000 |' in progress.update(2, loss=1.0, lr=0.0)


def test_on_a_terminal_the_line_is_rewritten_in_place():
  clock, terminal = FakeClock(), FakeTerminal()
  progress = Progress(100, 8, 10, stream=terminal, clock=clock)
  first = progress.update(1, loss=1.0, lr=0.1, img_per_s=5)
  clock.now = 1.0
  second = progress.update(2, loss=0.9, lr=0.1, img_per_s=5)
  # Carriage return, the line, then clear-to-end-of-line; no newline.
  assert terminal.getvalue() == f'\r{first}\x1b[K\r{second}\x1b[K'
  assert second.endswith('ETA 1m38s')
  progress.close()  # Later output starts on its own line.
  assert terminal.getvalue().endswith('\x1b[K\n')


def test_disabled_progress_prints_nothing():
  stream = io.StringIO()
  line = Progress(100, 8, 10, stream=stream, enabled=False).update(
      1, loss=1.0, lr=0.1, img_per_s=5)
  assert line.startswith('step 1/100') and stream.getvalue() == ''
