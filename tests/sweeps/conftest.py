"""Fixtures of the sweep tests: a tiny image folder, private caches, four reference runs."""

import pytest

from resnet_jax.sweeps import execute
from tiny_datasets import write_image_folder
from tiny_sweeps import SEEDS, tiny_config, write_sweep_file


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  return write_image_folder(tmp_path_factory.mktemp('images'))


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
  """Dataset and compilation caches in the test's temporary area, shared by the module."""
  monkeypatch.setenv('RESNET_JAX_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


@pytest.fixture(scope='session')
def separate_runs(tiny_data, tmp_path_factory):
  """Four seeds trained one by one through the sweep runner (vmap off): the reference."""
  workdir = tmp_path_factory.mktemp('separate')
  spec = write_sweep_file(workdir.parent / 'seeds_spec.py', f"sweeps.axis('seed', {SEEDS})")
  rows = execute.main(tiny_config(tiny_data), str(spec), workdir, vmap='off')
  return workdir, spec, rows
