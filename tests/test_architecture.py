"""The package's shape, checked statically (no import, nothing runs): short
functions, no import cycle between modules, imports at the top, one trainer,
a thin command line."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'famus_jax'
MAX_FUNCTION_LINES = 60


def _modules(root: pathlib.Path = PACKAGE) -> dict[str, ast.Module]:
  """Dotted module name -> parsed source, for every module of the package."""
  out = {}
  for path in sorted(root.rglob('*.py')):
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    out['.'.join(parts)] = ast.parse(path.read_text(), str(path))
  return out


def long_functions(modules: dict[str, ast.Module]) -> list[str]:
  """'file: name (n lines)' of every function or method over the limit."""
  out = []
  for name, tree in modules.items():
    file = name.split('.', 1)[1].replace('.', '/') + '.py' if '.' in name else ''
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          out.append(f'{file}: {node.name} ({n} lines)')
  return out


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
  """module -> the package modules it imports (at any depth of its source).
  `from pkg import sub` imports the submodule, `from pkg import name` the
  package (its `__init__`)."""
  graph = {m: set() for m in modules}
  for m, tree in modules.items():
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules
                   else node.module for a in node.names]
      else:
        continue
      graph[m].update(t for t in targets if t in modules and t != m)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while not comp or comp[-1] != v:
        comp.append(stack.pop())
        on_stack.discard(comp[-1])
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def nested_imports(modules: dict[str, ast.Module]) -> list[str]:
  """'module:line' of every import inside a function or class body."""
  out = []
  for name, tree in modules.items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out += [f'{name}:{n.lineno}' for n in ast.walk(node)
                if isinstance(n, (ast.Import, ast.ImportFrom))]
  return out


@pytest.fixture(scope='module')
def modules():
  return _modules()


def test_functions_are_short(modules):
  assert long_functions(modules) == []


def test_no_import_cycle(modules):
  assert cycles(import_graph(modules)) == []


def test_imports_at_the_top(modules):
  assert nested_imports(modules) == []


def test_one_trainer_and_a_thin_main(modules):
  trainers = [f'{m}.{n.name}' for m, tree in modules.items() for n in ast.walk(tree)
              if isinstance(n, ast.ClassDef) and 'Trainer' in n.name]
  assert trainers == ['famus_jax.training.trainer.Trainer']
  assert len((PACKAGE / 'main.py').read_text().splitlines()) <= 100


def test_the_checks_find_what_they_look_for():
  """Each check on a planted case: a long function, a cycle, a nested import."""
  long_src = 'def f():\n' + '  x = 1\n' * MAX_FUNCTION_LINES
  planted = {'famus_jax.a': ast.parse(long_src + 'import famus_jax.b\n'),
             'famus_jax.b': ast.parse('def g():\n  from famus_jax import a\n')}
  assert long_functions(planted) == [f'a.py: f ({MAX_FUNCTION_LINES + 1} lines)']
  assert cycles(import_graph(planted)) == [['famus_jax.a', 'famus_jax.b']]
  assert nested_imports(planted) == ['famus_jax.b:2']
