"""Experiment scripts at their smallest settings, and the quickstart notebook.

Each script's `main(argv)` runs with `--smoke` (tiny model, a few iterations)
into a temporary results directory; the test checks that the JSON and the PNG
are written and that every number in the JSON is finite.
"""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `experiments` is not an installed package
  sys.path.insert(0, ROOT)


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


@pytest.fixture(scope='module')
def xla_cache(tmp_path_factory):
  """One persistent XLA cache for this module's runs (programs shared between
  scripts compile once), removed from the process's JAX config afterwards."""
  from experiments import digits_lab
  yield str(tmp_path_factory.mktemp('xla_cache'))
  digits_lab.disable_compilation_cache()


@pytest.fixture
def argv(tmp_path, xla_cache):
  """Common smoke flags: results into tmp, the module's XLA cache."""
  return ['--smoke', '--results-dir', str(tmp_path), '--xla-cache', xla_cache]


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


def test_layer_selection_smoke(argv, tmp_path):
  from experiments import layer_selection
  layer_selection.main(argv)
  payload = check_outputs(str(tmp_path), 'layer_selection_smoke')
  row = payload['per_k'][str(payload['main_k'])]
  assert len(row['counts']) == len(payload['layers'])
  assert sum(row['counts']) == pytest.approx(row['mean_selected'] * payload['steps'])
  assert 0.0 <= row['mean_relative_depth'] <= 1.0


def test_layer_selection_from_a_training_run(tmp_path):
  """The figure from a training loop's metrics.jsonl (as a GPU run would write it)."""
  import importlib.util
  from experiments import layer_selection
  from famus_jax.training import config as config_lib
  spec = importlib.util.spec_from_file_location('digits_cfg',
                                                os.path.join(ROOT, 'configs', 'digits.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(
      config_lib.config_to_dict(module.get_config()), default=list))
  rows = [{'step': 20 * (i + 1), 'meta_steps': 20,
           'layer_frequency': [0.1 * ((i + j) % 5) for j in range(13)]} for i in range(3)]
  (run / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  layer_selection.main(['--from-workdir', str(run), '--results-dir', str(tmp_path)])
  payload = check_outputs(str(tmp_path), 'layer_selection_run')
  assert payload['layers'][0] == 'stem/conv' and len(payload['layers']) == 13
  row = payload['per_k']['4']
  assert row['counts'][0] == pytest.approx(20 * (0.0 + 0.1 + 0.2))


def test_weights_clean_vs_noisy_smoke(argv, tmp_path):
  from experiments import weights_clean_vs_noisy
  weights_clean_vs_noisy.main(argv)
  payload = check_outputs(str(tmp_path), 'weights_clean_vs_noisy_smoke')
  assert set(payload['results']) == {'mwnet', 'random_s4', 'famus'}
  for res in payload['results'].values():
    assert len(res['points']) == len(payload['points'])
    point = res['points'][-1]
    assert 0.0 < point['clean_mean'] < 1.0 and 0.0 < point['noisy_mean'] < 1.0
    assert sum(point['per_seed'][0]['clean_hist']) > 0


def test_iteration_time_smoke(argv, tmp_path):
  from experiments import iteration_time
  iteration_time.main(argv)
  payload = check_outputs(str(tmp_path), 'iteration_time_cpu_smoke')
  rows = payload['rows']
  assert rows['plain']['ratio'] == 1.0
  assert set(iteration_time.SMOKE) <= set(rows)
  assert rows['mwnet_exact']['paper_ratio_to_exact'] == 1.0
  assert all(r['ms'] > 0 for r in rows.values())


def test_synthetic_cifar_run_smoke(argv, tmp_path):
  from experiments import synthetic_cifar_run
  synthetic_cifar_run.main(argv)
  payload = check_outputs(str(tmp_path), 'synthetic_cifar_cpu_smoke')
  assert set(payload['rows']) == {'ce', 'mwnet_famus'}
  assert payload['rows']['ce']['ratio_to_first'] == 1.0
  assert 0.2 < payload['data']['realised_noise_rate'] < 0.5


def test_digits_study_smoke(argv, tmp_path):
  from experiments import digits_study
  # Alg. 2 runs in test_pseudo_clean_significance_smoke; here the single-network path.
  digits_study.main(argv + ['--methods', 'ce,mwnet_famus'])
  payload = check_outputs(str(tmp_path), 'digits_study_smoke')
  assert os.path.exists(os.path.join(str(tmp_path), 'digits_study_smoke.md'))
  assert {r['method'] for r in payload['runs']} == {'ce', 'mwnet_famus'}
  for r in payload['runs']:
    assert 0.0 <= r['final_test_accuracy'] <= 1.0 and r['wall_s'] > 0


def test_pseudo_clean_significance_smoke(argv, tmp_path):
  from experiments import pseudo_clean_significance as pcs
  pcs.main(argv)
  payload = check_outputs(str(tmp_path), 'pseudo_clean_significance_smoke')
  row = payload['table']['0.4']
  assert len(row['famus_pseudo_clean']['accuracies']) == 2
  assert all(p < 0.01 for p in payload['paper_p_values'].values())


def test_t_test_direction():
  """One-tailed: small p when the first sample is clearly larger, large p otherwise."""
  from experiments import pseudo_clean_significance as pcs
  assert pcs.t_test([0.95, 0.96, 0.955], [0.90, 0.91, 0.905])['student_p'] < 0.01
  assert pcs.t_test([0.90, 0.91, 0.905], [0.95, 0.96, 0.955])['student_p'] > 0.99


def test_quickstart_notebook_runs(monkeypatch):
  import nbclient  # the `test` extra installs nbclient, nbformat and ipykernel
  import nbformat
  from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
  try:
    KernelSpecManager().get_kernel_spec('python3')
  except NoSuchKernel:
    pytest.fail('no python3 Jupyter kernel: install the test extra (pip install -e ".[test]") '
                'or run python -m ipykernel install --user')
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
