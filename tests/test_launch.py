"""launch.py: a bad --config file, variant or override is one line, no traceback, nonzero exit."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('arguments, message', [
    (['--config=configs/wrn.py:quik'], "unknown config variant(s) ['quik']; allowed: dropout, quick"),
    (['--config=configs/wrn.py', '--config.model.dept=3'],
     "unknown config key 'dept'; Did you mean \"depth\""),
    (['--config=configs/nowhere.py'], 'No such file or directory'),
    (['--config=configs/wrn.py', '--config.batch_size=abc'], "invalid literal for int()"),
    (['--config=configs/wrn.py', '--config.model.width=0'], 'integer >= 1'),
])
def test_bad_command_lines_get_one_line_errors(arguments, message):
  result = subprocess.run([sys.executable, 'launch.py', *arguments, '--mode=summary'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr
