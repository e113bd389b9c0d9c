"""Experiment scripts at their smallest settings, and the quickstart notebook.

Each script's `main(argv)` runs with `--smoke` (tiny model, a few iterations)
into a temporary results directory; the test checks that the JSON and the PNG
are written and that every number in the JSON is finite.
"""

import json
import logging
import math
import os
import re
import statistics
import sys

import pytest
from test_robustness import _write_fashion_idx

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


@pytest.fixture(autouse=True)
def _logger_levels_kept():
  """A script leaves the process's loggers as it found them (a study that
  silenced famus_jax for good would hide the next test's warnings)."""
  from experiments import common
  levels = lambda: {n: logging.getLogger(n).level for n in common.RUN_LOGGERS}
  before = levels()
  yield
  assert levels() == before


def test_quiet_logs_restores_the_levels_even_on_error():
  from experiments import common
  logger = logging.getLogger('famus_jax')
  before = logger.level
  with pytest.raises(KeyError):
    with common.quiet_logs():
      assert logger.level == logging.ERROR
      raise KeyError('x')
  assert logger.level == before


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


def test_fidelity_digits_smoke_pairs_each_variant_with_ours(tmp_path):
  from experiments.studies import fidelity_digits  # pylint: disable=g-import-not-at-top
  fidelity_digits.main(['--smoke', '--variants=ours,gate_surrogate_official',
                        '--results-dir', str(tmp_path)])
  with open(os.path.join(tmp_path, 'fidelity_digits_smoke.json')) as f:
    result = json.load(f)
  assert [(r['variant'], r['seed']) for r in result['runs']] == [
      ('ours', 0), ('gate_surrogate_official', 0)]
  runs = {r['variant']: r['final_test_accuracy'] for r in result['runs']}
  official = result['table']['gate_surrogate_official']
  assert official['paired_diff_mean'] == pytest.approx(
      runs['gate_surrogate_official'] - runs['ours'])
  assert 'paired_diff_mean' not in result['table']['ours']


def test_fidelity_digits_pairs_the_l2r_input_with_l2r():
  """The L2R sampler-input variant is paired with L2R + FaMUS, the others with ours."""
  from experiments.studies import fidelity_digits  # pylint: disable=g-import-not-at-top
  accuracy = {('ours', 0): .90, ('l2r_famus', 0): .80, ('l2r_famus_zero_input', 0): .70,
              ('ours', 1): .91, ('l2r_famus', 1): .82, ('l2r_famus_zero_input', 1): .75}
  table = fidelity_digits.summarize([
      {'variant': v, 'seed': s, 'final_test_accuracy': a} for (v, s), a in accuracy.items()])
  zero = table['l2r_famus_zero_input']
  assert zero['paired_to'] == 'l2r_famus'
  assert zero['paired_diff_mean'] == pytest.approx(-0.085)
  assert table['l2r_famus']['paired_to'] == 'ours'
  assert table['l2r_famus']['paired_diff_mean'] == pytest.approx(-0.095)


def test_meta_grad_fidelity_smoke(argv, tmp_path):
  from experiments.paper import meta_grad_fidelity
  meta_grad_fidelity.main(argv)
  payload = check_outputs(str(tmp_path), 'meta_grad_fidelity_smoke')
  # Σ_l g_l is the exact meta gradient (linear in the gates), in θ and per example.
  assert payload['summary']['max_sum_check'] < 1e-4
  for point in payload['trajectory']:
    assert -1.0 - 1e-6 <= point['famus_cos'] <= 1.0 + 1e-6
    assert len(point['layer_share']) == len(payload['layers'])
  assert payload['variance'] and payload['variance'][0]['exact']['trace_cov'] >= 0


def test_layer_selection_smoke(argv, tmp_path):
  from experiments.paper import layer_selection
  layer_selection.main(argv)
  payload = check_outputs(str(tmp_path), 'layer_selection_smoke')
  row = payload['per_k'][str(payload['main_k'])]
  assert len(row['counts']) == len(payload['layers'])
  assert sum(row['counts']) == pytest.approx(row['mean_selected'] * payload['steps'])
  assert 0.0 <= row['mean_relative_depth'] <= 1.0


def test_layer_selection_from_a_training_run(tmp_path):
  """The figure from a training loop's metrics.jsonl (as a GPU run would write it)."""
  import importlib.util
  from experiments.paper import layer_selection
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
  from experiments.paper import weights_clean_vs_noisy
  weights_clean_vs_noisy.main(argv)
  payload = check_outputs(str(tmp_path), 'weights_clean_vs_noisy_smoke')
  assert set(payload['results']) == {'mwnet', 'random_s4', 'famus'}
  for res in payload['results'].values():
    assert len(res['points']) == len(payload['points'])
    point = res['points'][-1]
    assert 0.0 < point['clean_mean'] < 1.0 and 0.0 < point['noisy_mean'] < 1.0
    assert sum(point['per_seed'][0]['clean_hist']) > 0


def test_iteration_time_smoke(argv, tmp_path):
  from experiments.paper import iteration_time
  iteration_time.main(argv)
  payload = check_outputs(str(tmp_path), 'iteration_time_cpu_smoke')
  rows = payload['rows']
  assert set(iteration_time.SMOKE) <= set(rows)
  for row in rows.values():  # the median of the timed rounds, divided by the references
    assert row['ms'] > 0 and row['ms'] == pytest.approx(statistics.median(row['ms_all']))
    assert row['ratio'] == pytest.approx(row['ms'] / rows['plain']['ms'])
    assert row['ratio_to_exact'] == pytest.approx(row['ms'] / rows['mwnet_exact']['ms'])
  # The paper's Table 1/4 times (ms): MW-Net 933, + FaMUS 284, last block b12 326.
  assert rows['mwnet_famus']['paper_ratio_to_exact'] == pytest.approx(284 / 933)
  assert rows['block_last']['paper_ratio_to_exact'] == pytest.approx(326 / 933)
  assert rows['plain']['paper_ratio_to_exact'] is None


def test_synthetic_cifar_run_smoke(argv, tmp_path):
  from experiments.benchmarks import synthetic_cifar_run
  synthetic_cifar_run.main(argv)
  payload = check_outputs(str(tmp_path), 'synthetic_cifar_cpu_smoke')
  rows = payload['rows']
  assert set(rows) == {'ce', 'mwnet_famus'}
  for row in rows.values():
    assert row['ms_per_iteration'] > 0
    assert row['ratio_to_first'] == pytest.approx(
        row['ms_per_iteration'] / rows['ce']['ms_per_iteration'])
  assert 0.2 < payload['data']['realised_noise_rate'] < 0.5


def test_digits_study_smoke(argv, tmp_path):
  from experiments.paper import digits_study
  # Alg. 2 runs in test_pseudo_clean_significance_smoke; here the single-network path.
  digits_study.main(argv + ['--methods', 'ce,mwnet_famus'])
  payload = check_outputs(str(tmp_path), 'digits_study_smoke')
  assert os.path.exists(os.path.join(str(tmp_path), 'digits_study_smoke.md'))
  assert {r['method'] for r in payload['runs']} == {'ce', 'mwnet_famus'}
  for r in payload['runs']:
    assert 0.0 <= r['final_test_accuracy'] <= 1.0 and r['wall_s'] > 0


def fake_fashion_mnist(folder) -> str:
  """Fashion-MNIST IDX files of random images: 130 training, 20 test per class."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from famus_jax.data import idx
  rng = np.random.default_rng(0)
  for split, per in (('train', 130), ('t10k', 20)):
    labels = np.tile(np.arange(10, dtype=np.uint8), per)
    idx.write_idx(str(folder / f'{split}-labels-idx1-ubyte.gz'), labels)
    idx.write_idx(str(folder / f'{split}-images-idx3-ubyte.gz'),
                  rng.integers(0, 256, (labels.size, 28, 28)).astype(np.uint8))
  return str(folder)


def test_fashion_mnist_study_smoke(argv, tmp_path):
  """On IDX files written here (130 training, 20 test images per class)."""
  from experiments.paper import fashion_mnist_study
  folder = fake_fashion_mnist(tmp_path / 'fashion')
  # Alg. 2 runs in test_pseudo_clean_significance_smoke; here the other paths.
  fashion_mnist_study.main(argv + ['--methods', 'ce_meta,mwnet', '--set',
                                   f'data.data_dir="{folder}"'])
  payload = check_outputs(str(tmp_path), 'fashion_mnist_study_smoke')
  assert os.path.exists(os.path.join(str(tmp_path), 'fashion_mnist_study_smoke.md'))
  runs = {r['method']: r for r in payload['runs']}
  assert set(runs) == {'ce_meta', 'mwnet'}
  # same number of iterations: 20 images/class x 10 classes / batch 100, 1 epoch
  assert runs['ce_meta']['num_steps'] == runs['mwnet']['num_steps'] == 2
  assert len(runs['mwnet']['weights_over_training']['clean']) >= 1
  assert 0.0 <= runs['ce_meta']['final_test_accuracy'] <= 1.0
  # --merge: the repeated (method, setting, seed) is replaced, the other run kept.
  fashion_mnist_study.main(argv + ['--methods', 'ce_meta', '--merge', '--set',
                                   f'data.data_dir="{folder}"'])
  merged = check_outputs(str(tmp_path), 'fashion_mnist_study_smoke')
  assert sorted(r['method'] for r in merged['runs']) == ['ce_meta', 'mwnet']
  assert [r for r in merged['runs'] if r['method'] == 'mwnet'] == [runs['mwnet']]
  assert merged['merged'] and set(merged['table']) == {'ce_meta', 'mwnet'}


def test_fashion_mnist_study_meta_scopes():
  """The exact rows differentiate through every layer, and so does FaMUS's
  sampler (every layer a candidate, run-time scopes)."""
  from experiments.paper import fashion_mnist_study as study
  config = lambda m: study.make_config(m, 'sym40', 0, 20, 1, False, {})
  famus = config('mwnet_famus')
  assert famus.meta.sampler == 'famus' and famus.meta.candidate_layers == 'all'
  assert famus.meta.prune_levels == 0 and famus.meta.rate_cost == 'scope'
  for method in ('mwnet', 'l2r', 'mlc', 'mlc_transition'):
    c = config(method)
    assert (c.meta.method, c.meta.sampler, c.meta.candidate_layers) == (method, 'all', 'all')


def test_dispatch_study_times_only_seeds_that_ran_quiet():
  """ms per iteration and × exact come from the (setting, seed) groups whose
  every run ended quiet; a loaded run takes its whole seed out, so a ratio
  never compares a quiet run with a loaded one."""
  from experiments.studies import dispatch_study  # pylint: disable=g-import-not-at-top
  def run(row, seed, ms, load):
    return {'row': row, 'setting': 'sym40', 'seed': seed, 'steady_ms': ms, 'load_average': load,
            'final_test_accuracy': 0.5, 'selected_test_accuracy': None,
            'program_counts': {'meta': 1}, 'mean_num_selected': None}
  runs = [run('exact', 0, 300.0, 6.0), run('famus', 0, 100.0, 2.0),   # seed 0: loaded exact
          run('exact', 1, 60.0, 2.0), run('famus', 1, 40.0, 2.5)]     # seed 1: quiet
  assert dispatch_study.timed_runs(runs) == runs[2:]
  table = dispatch_study.aggregate(runs)
  assert table['famus']['sym40']['x_exact'] == pytest.approx(40.0 / 60.0)
  assert table['famus']['sym40']['ms_per_iteration'] == 40.0
  assert table['famus']['sym40']['accuracy'] == 0.5  # accuracy from every seed
  loaded = [dict(r, load_average=5.0) for r in runs]
  assert dispatch_study.timed_runs(loaded) == loaded
  assert 'no seed ran' in dispatch_study._timed_note(loaded)


def test_dispatch_study_smoke_and_resume(argv, tmp_path):
  """FaMUS on IDX files written here; a second call with the exact row keeps
  the run it finds and adds the new one; the table's ratio to exact and the
  scope fractions are the runs' own numbers."""
  from experiments.studies import dispatch_study
  folder = tmp_path / 'fashion'
  _write_fashion_idx(folder, train_per_class=140)
  data = ['--settings', 'sym40', '--set', f'data.data_dir="{folder}"']
  dispatch_study.main(argv + ['--rows', 'famus'] + data)
  first = check_outputs(str(tmp_path), 'dispatch_study_smoke')
  dispatch_study.main(argv + ['--rows', 'famus,exact'] + data)
  payload = check_outputs(str(tmp_path), 'dispatch_study_smoke')
  assert payload['runs'][:1] == first['runs']
  assert [r['row'] for r in payload['runs']] == ['famus', 'exact']
  famus_run, exact_run = payload['runs']
  table = payload['table']
  assert table['exact']['sym40']['x_exact'] == 1.0
  assert table['famus']['sym40']['x_exact'] == pytest.approx(
      famus_run['steady_ms'] / exact_run['steady_ms'])
  counts = famus_run['program_counts']
  assert set(counts) <= {'meta_scope0', 'meta_scope1'}
  assert table['famus']['sym40']['scope_fractions'] == pytest.approx(
      {k: v / sum(counts.values()) for k, v in counts.items()})
  assert table['exact']['sym40']['scope_fractions'] == {'meta': 1.0}
  for row in table.values():
    assert 0.0 <= row['sym40']['accuracy'] <= 1.0
  assert os.path.exists(os.path.join(str(tmp_path), 'dispatch_study_smoke.md'))
ROW_KEYS = {'method', 'setting', 'seed', 'final', 'selected', 'best', 'ms_per_iteration'}


def test_fashion_mnist_long_rows_merge_and_resume(argv, tmp_path, monkeypatch):
  """Row schema; the noise-free rows run once and fill every column; a study
  stopped in a run continues where it stopped (finished rows kept, the stopped
  run resumed from its workdir); later calls add rows; another budget refuses."""
  from experiments.studies import fashion_mnist_long as long
  from famus_jax import train
  flags = argv + ['--set', f'data.data_dir="{fake_fashion_mnist(tmp_path / "fashion")}"',
                  '--workdirs', str(tmp_path / 'runs')]
  real, calls = train.train_and_evaluate, []

  def counted(config, workdir, stop_at=None):
    calls.append(os.path.basename(workdir).rsplit('_', 2)[0])  # method_setting
    summary = real(config, workdir)
    if len(calls) == stop_at:
      raise KeyboardInterrupt  # killed before its row was written
    return summary

  monkeypatch.setattr(train, 'train_and_evaluate', lambda c, w: counted(c, w, stop_at=2))
  with pytest.raises(KeyboardInterrupt):
    long.main(flags + ['--methods', 'ce,ce_true'])
  first = check_outputs(str(tmp_path), 'fashion_mnist_long_smoke')
  assert [r['method'] for r in first['runs']] == ['ce'] and not first['complete']
  assert len(os.listdir(tmp_path / 'runs')) == 1  # the stopped run's workdir is kept

  calls.clear()
  monkeypatch.setattr(train, 'train_and_evaluate', counted)
  payload = long.main(flags + ['--methods', 'ce,ce_true,clean_only'])
  assert calls == ['ce_true_none', 'clean_only_none']
  rows = {r['method']: r for r in payload['runs']}
  assert rows['ce'] == first['runs'][0]  # not run again
  assert rows['ce_true']['resumed_from'] == rows['ce_true']['num_steps'] == 4
  assert os.listdir(tmp_path / 'runs') == []
  for r in payload['runs']:
    assert ROW_KEYS <= set(r) and 0 <= r['selected'] <= 1 and r['best'] >= r['final']
    assert r['curve']['epoch'] == [1, 2] and r['curve']['test'][-1] == r['final']
    assert r['setting'] == ('sym60' if r['method'] == 'ce' else 'none')
  assert payload['complete'] and payload['table']['ce_true']['sym60']['seeds'] == [0]

  calls.clear()  # another setting: only CE runs, the noise-free rows fill its column
  merged = long.main(flags + ['--methods', 'ce,ce_true', '--settings', 'sym40'])
  assert calls == ['ce_sym40'] and len(merged['runs']) == 4
  assert merged['settings'] == ['sym60', 'sym40']
  assert merged['table']['ce_true']['sym40'] == merged['table']['ce_true']['sym60']
  with pytest.raises(SystemExit, match='another budget'):
    long.main(flags + ['--set', 'optim.lr=0.1'])


def test_a_stopped_study_ends_in_one_line():
  """SIGTERM / SIGINT inside a study (the run saved its checkpoint) exits with
  the resume message, not a traceback; other errors still propagate."""
  import signal
  from experiments import common
  from famus_jax import train

  def stopped():
    raise train.Preempted(step=7, signum=signal.SIGTERM)

  with pytest.raises(SystemExit) as e:
    common.run_study(stopped)
  message = str(e.value.code)
  assert '\n' not in message
  assert 'SIGTERM at step 7' in message and 'same command continues' in message

  def broken():
    raise ValueError('not a preemption')

  with pytest.raises(ValueError):
    common.run_study(broken)


def test_fashion_mnist_long_configs():
  """Exact rows differentiate through every layer, FaMUS keeps the config's
  scope; evaluation every epoch; Alg. 2 gets the meta images as noisy data."""
  from experiments.studies import fashion_mnist_long as long
  b = long.budget(smoke=False)
  config = lambda m, s='sym60': long.make_config(m, s, 0, b, False, {})
  famus = config('mwnet_famus')
  from famus_jax.training.config import load_config  # pylint: disable=g-import-not-at-top
  shipped = load_config(os.path.join(ROOT, 'configs', 'fashion_mnist.py')).meta
  fields = ('sampler', 'candidate_layers', 'prune_levels', 'rate_cost', 'dispatch')
  assert [famus.meta[f] for f in fields] == [shipped[f] for f in fields]
  assert famus.meta.sampler == 'famus'
  assert famus.train.eval_every == b['steps_per_epoch'] == 50
  for method in ('mwnet_exact', 'l2r', 'mlc'):
    assert (config(method).meta.sampler, config(method).meta.candidate_layers) == ('all',
                                                                                   'all')
  assert config('ce_true', 'none').data.noise_type == 'none'
  assert config('clean_only', 'none').optim.num_steps == 20 * 50
  assert config('ce', 'asym40').data.noise_type == 'asymmetric'
  alg2 = config('alg2')
  assert (alg2.data.train_per_class, alg2.data.meta_per_class,
          alg2.alg2.eval_every_epochs) == (510, 0, 1)
  assert long.plan(['ce', 'ce_true', 'alg2'], ['sym60', 'sym40'], None) == [
      ('ce', 'sym60', 0), ('ce_true', 'none', 0), ('alg2', 'sym60', 0),
      ('ce', 'sym60', 1), ('ce_true', 'none', 1), ('ce', 'sym60', 2),
      ('ce_true', 'none', 2), ('ce', 'sym40', 0), ('alg2', 'sym40', 0),
      ('ce', 'sym40', 1), ('ce', 'sym40', 2)]


def test_fashion_mnist_long_cells_say_how_many_seeds():
  from experiments.studies import fashion_mnist_long as long
  three = {'final_mean': 0.8, 'final_std': 0.01, 'seeds': [0, 1, 2]}
  one = {'final_mean': 0.815, 'final_std': 0.0, 'seeds': [0]}
  assert long._pm(three, 'final') == '80.0 ± 1.0'  # pylint: disable=protected-access
  assert long._pm(one, 'final') == '81.5'  # no ± from one seed  # pylint: disable=protected-access
  assert long._pm(None, 'final') == '—'  # pylint: disable=protected-access
  assert long._seed_counts([three, three, three]) == '3'  # pylint: disable=protected-access
  assert long._seed_counts([three, one, None]) == '3 / 1 / —'  # pylint: disable=protected-access
  assert long._seed_counts([three, three, None]) == '3 / 3 / —'  # pylint: disable=protected-access


def test_fashion_mnist_long_timing(argv, tmp_path):
  """`--timing`: rounds of whole runs in one process, medians, ratio to exact."""
  from experiments.studies import fashion_mnist_long as long
  folder = fake_fashion_mnist(tmp_path / 'fashion')
  payload = long.main(argv + ['--timing', '--methods', 'ce', '--rounds', '2', '--set',
                              f'data.data_dir="{folder}"'])
  assert [(r['round'], r['method']) for r in payload['runs']] == [(0, 'ce'), (1, 'ce')]
  assert payload['ms_per_iteration']['ce'] == statistics.median(
      r['ms_per_iteration'] for r in payload['runs'])
  assert payload['vs_exact'] is None  # no exact row to compare with
  assert os.path.exists(os.path.join(str(tmp_path), 'fashion_mnist_long_smoke_timing.md'))


@pytest.mark.slow
def test_pseudo_clean_significance_smoke(argv, tmp_path):
  """Both arms on one seed (the statistics over seeds: next test)."""
  from experiments.paper import pseudo_clean_significance as pcs
  pcs.main(argv + ['--seeds', '0'])
  payload = check_outputs(str(tmp_path), 'pseudo_clean_significance_smoke')
  row = payload['table']['0.4']
  assert [(r['arm'], r['seed']) for r in payload['runs']] == [
      ('mwnet_pseudo_clean', 0), ('famus_pseudo_clean', 0)]
  for arm in ('famus_pseudo_clean', 'mwnet_pseudo_clean'):
    (acc,) = row[arm]['accuracies']
    assert 0.0 <= acc <= 1.0 and row[arm]['mean'] == acc and row[arm]['std'] == 0.0
  assert row['test']['student_p'] is None  # one seed per arm: no t-test


def test_pseudo_clean_table_means_stds_and_student_t():
  from experiments.paper import pseudo_clean_significance as pcs
  accuracy = {('famus_pseudo_clean', 0): 0.91, ('famus_pseudo_clean', 1): 0.93,
              ('mwnet_pseudo_clean', 0): 0.90, ('mwnet_pseudo_clean', 1): 0.89}
  runs = [{'arm': a, 'noise_rate': 0.4, 'seed': s, 'final_test_accuracy': v}
          for (a, s), v in accuracy.items()]
  runs.append({'arm': 'famus_pseudo_clean', 'noise_rate': 0.6, 'seed': 0,
               'final_test_accuracy': 0.5})  # another rate: not in 0.4's row
  row = pcs.summarize(runs, [0.4])['0.4']
  famus, mwnet = (row[a]['accuracies'] for a in ('famus_pseudo_clean', 'mwnet_pseudo_clean'))
  assert famus == [0.91, 0.93] and mwnet == [0.90, 0.89]
  for arm, acc in (('famus_pseudo_clean', famus), ('mwnet_pseudo_clean', mwnet)):
    assert row[arm]['mean'] == pytest.approx(sum(acc) / 2)
    assert row[arm]['std'] == pytest.approx(abs(acc[0] - acc[1]) / math.sqrt(2))
  # Student's pooled t by hand (n = 2 per arm, 2 dof).
  pooled = math.sqrt((row['famus_pseudo_clean']['std'] ** 2
                      + row['mwnet_pseudo_clean']['std'] ** 2) / 2)
  t = (sum(famus) - sum(mwnet)) / 2 / (pooled * math.sqrt(2 / 2))
  assert row['test']['student_t'] == pytest.approx(t)
  # one-tailed p for 2 dof: P(T > t) = 1/2 − t / (2 sqrt(t² + 2))
  assert row['test']['student_p'] == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)))


def test_t_test_direction():
  """One-tailed: small p when the first sample is clearly larger, large p otherwise."""
  from experiments.paper import pseudo_clean_significance as pcs
  assert pcs.t_test([0.95, 0.96, 0.955], [0.90, 0.91, 0.905])['student_p'] < 0.01
  assert pcs.t_test([0.90, 0.91, 0.905], [0.95, 0.96, 0.955])['student_p'] > 0.99
  # The paper's Table 2 p-values from its means and stds (n = 3, 4 dof), by hand:
  # one-tailed p for 4 dof is 1/2 − (3/4)·x·(1 − x²/3), x = t / sqrt(t² + 4).
  for col, arms in pcs.PAPER.items():
    (m1, s1), (m2, s2) = arms['famus_pseudo_clean'], arms['mwnet_pseudo_clean']
    t = (m1 - m2) / math.sqrt((s1 ** 2 + s2 ** 2) / 2 * (2 / 3))
    x = t / math.sqrt(t * t + 4)
    assert pcs.paper_p_values()[col] == pytest.approx(0.5 - 0.75 * x * (1 - x * x / 3)), col


def test_label_issue_scores_smoke(tmp_path):
  from experiments.studies import label_issue_scores as lis
  payload = lis.main(['--smoke', '--results-dir', str(tmp_path)])
  check_outputs(str(tmp_path), 'label_issue_scores_digits_smoke')
  scores = payload['methods']['mwnet']['scores']
  assert set(scores) == set(lis.CANDIDATES)
  # the replayed record at the run's own decay gives the run's own table (the
  # run averages in float32 on the device, the replay in float64: scores that
  # tie to float32 rounding may swap places, a few pairs of the ROC-AUC)
  own = scores['trust+disagreement'][str(0.98)]
  run = payload['methods']['mwnet']['label_issues']['metrics']
  assert own['roc_auc'] == pytest.approx(run['roc_auc'], abs=1e-4)
  assert own['k'] == run['k']


@pytest.mark.slow
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
  relative = re.search(r'jvp vs by hand: ([0-9.eE+-]+) \(relative\)', text)
  assert relative, text
  assert float(relative.group(1)) < 1e-4
  accuracy = re.search(r'clean test accuracy: CE ([0-9.]+) +MW-Net ([0-9.]+)', text)
  assert accuracy and all(0.0 <= float(a) <= 1.0 for a in accuracy.groups()), text
  assert any('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
             for o in c.get('outputs', []))


def _index() -> str:
  """The index section of experiments/README.md, brace groups expanded
  (`stem.{json,png}` -> `stem.json stem.png`)."""
  with open(os.path.join(ROOT, 'experiments', 'README.md')) as f:
    text = f.read()
  assert '## Index' in text and '## Conventions' in text, 'experiments/README.md: no index'
  index = text[text.index('## Index'):text.index('## Conventions')]
  return re.sub(r'([\w-]+)\.\{([\w,]+)\}',
                lambda m: ' '.join(f'{m.group(1)}.{e}' for e in m.group(2).split(',')), index)


def test_index_names_every_result_file_and_every_script():
  index = _index()
  named = set(re.findall(r'[\w-]+\.(?:json|md|png)\b', index))
  results = sorted(os.listdir(os.path.join(ROOT, 'experiments', 'results')))
  assert not set(results) - named, ('result files missing from the index of '
                                    f'experiments/README.md: {sorted(set(results) - named)}')
  tokens = set(re.findall(r'`([^`]+)`', index))
  scripts = [(group, name) for group in ('paper', 'studies', 'benchmarks', 'cpu')
             for name in sorted(os.listdir(os.path.join(ROOT, 'experiments', group)))
             if name.endswith(('.py', '.sh')) and name != '__init__.py']
  assert len(scripts) > 25
  unnamed = [f'{g}/{n}' for g, n in scripts if not {n, n.rsplit('.', 1)[0]} & tokens]
  assert not unnamed, f'scripts missing from the index of experiments/README.md: {unnamed}'
