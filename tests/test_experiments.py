"""Experiment scripts at their smallest settings, and the quickstart notebook.

Each script's `main(argv)` runs with `--smoke` (tiny model, a few iterations)
into a temporary results directory; the test checks that the JSON and the PNG
are written and that every number in the JSON is finite.
"""

import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numbers(obj, path='$'):
  """Yields (json path, value) for every number in a JSON document."""
  if isinstance(obj, bool) or obj is None:
    return
  if isinstance(obj, (int, float)):
    yield path, obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      yield from _numbers(v, f'{path}.{k}')
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      yield from _numbers(v, f'{path}[{i}]')


def check_outputs(results_dir, stem, allow_nan=()):
  """The JSON and PNG of `stem` exist; every number is finite; returns the JSON."""
  json_path = os.path.join(results_dir, stem + '.json')
  png_path = os.path.join(results_dir, stem + '.png')
  assert os.path.exists(json_path), os.listdir(results_dir)
  assert os.path.exists(png_path), os.listdir(results_dir)
  with open(png_path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(json_path) as f:
    payload = json.load(f)
  bad = [(p, v) for p, v in _numbers(payload) if not math.isfinite(v)
         and not any(a in p for a in allow_nan)]
  assert not bad, bad[:5]
  assert payload['machine']['platform']
  return payload


@pytest.fixture
def argv(tmp_path):
  """Common smoke flags; the XLA cache is off so nothing outside tmp is written."""
  return ['--smoke', '--results-dir', str(tmp_path), '--xla-cache', 'none']


def test_meta_grad_fidelity_smoke(argv, tmp_path):
  from experiments import meta_grad_fidelity
  meta_grad_fidelity.main(argv)
  payload = check_outputs(str(tmp_path), 'meta_grad_fidelity_smoke')
  # Σ_l g_l is the exact meta gradient (linear in the gates), in θ and per example.
  assert payload['summary']['max_sum_check'] < 1e-4
  for point in payload['trajectory']:
    assert -1.0 - 1e-6 <= point['famus_cos'] <= 1.0 + 1e-6
    assert len(point['layer_share']) == len(payload['layers'])
  assert payload['variance'] and payload['variance'][0]['exact']['trace_cov'] >= 0


def test_quickstart_notebook_runs(monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
  try:
    KernelSpecManager().get_kernel_spec('python3')
  except NoSuchKernel:
    pytest.skip('no python3 Jupyter kernel (python -m ipykernel install --user)')
  # The kernel inherits the environment: few iterations, CPU, quiet.
  monkeypatch.setenv('QUICKSTART_STEPS', '8')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  nb = nbformat.read(os.path.join(ROOT, 'experiments', 'quickstart.ipynb'), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': ROOT}})
  client.execute()  # raises CellExecutionError on any failing cell
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.get('outputs', []))
  assert 'jvp vs by hand' in text
  assert 'clean test accuracy' in text
  assert any('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
             for o in c.get('outputs', []))
