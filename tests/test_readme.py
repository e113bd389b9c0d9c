"""The README's front door: its "compose it yourself" snippet runs as written."""

import glob
import importlib.util
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The documents that show commands (generated result tables keep the commands they ran).
DOCS = ('*.md', 'docs/*.md', 'experiments/*.md', 'famus_jax/**/*.md')


def test_compose_snippet_runs_and_its_meta_gradient_matches_reverse(monkeypatch):
  """The snippet runs as written; its `meta_grad` call (jvp) agrees with the same
  call on the `reverse` path, as the snippet's comment says."""
  import chex
  import famus_jax as fj
  with open(README) as f:
    snippet = re.findall(r'```python\n(.*?)```', f.read(), re.S)[0]
  calls, original = [], fj.meta_grad

  def recording(*args, **kwargs):
    calls.append((args, kwargs))
    return original(*args, **kwargs)

  monkeypatch.setattr(fj, 'meta_grad', recording)
  scope = {}
  exec(compile(snippet, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  assert np.isfinite(float(scope['new'].loss))
  assert len(calls) == 1 and calls[0][1]['mode'] == 'jvp'
  args, kwargs = calls[0]
  reverse = original(*args, **{**kwargs, 'mode': 'reverse'})
  assert max(float(np.max(np.abs(x))) for x in
             __import__('jax').tree_util.tree_leaves(reverse.theta)) > 0
  chex.assert_trees_all_close(scope['g'].theta, reverse.theta, rtol=1e-4, atol=1e-9)


def test_ci_runs_exactly_the_readme_test_command():
  with open(README) as f:
    readme = f.read()
  with open(os.path.join(os.path.dirname(README), '.ci', 'run')) as f:
    ci = f.read()
  block = re.search(r'Run the tests \(what CI runs, `\.ci/run`\):\n\n```bash\n(.*?)\n```',
                    readme, re.S)
  assert block, 'README: the "Run the tests" paragraph with its bash block is missing'
  command = block.group(1)
  assert command == 'pip install -e ".[test]" && python -m pytest -n 2 tests'
  lines = [l for l in ci.splitlines() if l.strip() and not l.lstrip().startswith('#')]
  assert lines == ['set -euo pipefail', 'cd "$(dirname "$0")/.."', command], lines


def _named(pattern: str) -> set:
  """(document, match) for every match of `pattern`'s group 1 in the documents."""
  found = set()
  for doc in sorted({p for g in DOCS for p in glob.glob(os.path.join(ROOT, g), recursive=True)}):
    with open(doc) as f:
      found.update((os.path.relpath(doc, ROOT), m) for m in re.findall(pattern, f.read()))
  return found


def _module_exists(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # a parent package is missing
    return False


def test_every_experiments_module_the_docs_run_exists(monkeypatch):
  monkeypatch.syspath_prepend(ROOT)  # `experiments` is not an installed package
  named = _named(r'python -m\s+(experiments(?:\.\w+)+)')
  assert {doc for doc, _ in named} >= {'README.md', os.path.join('experiments', 'README.md')}
  missing = sorted((doc, m) for doc, m in named if not _module_exists(m))
  assert not missing, f'documented commands name modules that do not exist: {missing}'


def test_every_script_path_the_docs_run_exists():
  named = _named(r'(?:python|bash) ((?:experiments|tests)/[\w/]+\.(?:py|sh))\b')
  assert any(path.endswith('.sh') for _, path in named)
  missing = sorted((doc, p) for doc, p in named if not os.path.isfile(os.path.join(ROOT, p)))
  assert not missing, f'documented commands name files that do not exist: {missing}'
