"""The README's front door: its "compose it yourself" snippet runs as written."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_compose_snippet_runs():
  with open(README) as f:
    snippet = re.findall(r'```python\n(.*?)```', f.read(), re.S)[0]
  scope = {}
  exec(compile(snippet, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  assert np.isfinite(float(scope['new'].loss))
  assert all(np.all(np.isfinite(x)) for x in
             __import__('jax').tree_util.tree_leaves(scope['g'].theta))


def test_ci_runs_the_readme_test_command():
  with open(README) as f:
    readme = f.read()
  with open(os.path.join(os.path.dirname(README), '.ci', 'run')) as f:
    ci = f.read()
  command = re.search(r'```bash\n(pip install -e "\.\[test\]".*?)\n```', readme).group(1)
  assert command in ci
