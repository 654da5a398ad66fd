"""The package is layered: no module of resnet_jax imports, directly or through others, a
module that imports it, counting the imports inside functions too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'resnet_jax'


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
  """The resnet_jax modules `path` imports anywhere in it: `from resnet_jax.data import
  registry` is resnet_jax.data.registry, `from resnet_jax.model import build_model` the
  package resnet_jax.model."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        submodule = f'{node.module}.{alias.name}'
        found.add(submodule if submodule in known else node.module)
  return found & known - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
  paths = sorted(PACKAGE.rglob('*.py'))
  known = {module_name(path) for path in paths}
  return {module_name(path): imported_modules(path, known) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, str] = {}  # 'open' while on the current path, 'done' after
  path: list[str] = []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for successor in sorted(graph[node]):
      if state.get(successor) == 'open':
        return path[path.index(successor):] + [successor]
      if successor not in state and (cycle := visit(successor)):
        return cycle
    path.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_the_graph_sees_imports_at_module_level_and_inside_functions():
  graph = import_graph()
  assert 'resnet_jax.model' in graph['resnet_jax.train']  # from resnet_jax.model import ...
  assert 'resnet_jax.data.registry' in graph['resnet_jax.schema']  # a submodule
  assert 'resnet_jax.train' in graph['resnet_jax.sweeps.spec']  # inside Run.train
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_resnet_jax_has_no_import_cycle():
  assert find_cycle(import_graph()) is None
