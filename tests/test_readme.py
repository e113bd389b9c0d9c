"""The README's front door: its "compose it yourself" snippet runs as written."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


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
