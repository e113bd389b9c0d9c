"""experiments/cpu/cpu_levers.py: process commands, environments, the summary table."""

import pytest

from experiments.cpu import cpu_levers


def _args(argv=()):
  return cpu_levers._parse(list(argv))[1]  # pylint: disable=protected-access


def test_settings_are_unique_and_the_default_sweep_exists():
  names = [s.name for s in cpu_levers.SETTINGS]
  assert len(names) == len(set(names))
  assert set(cpu_levers.DEFAULT_SETTINGS) <= set(names)
  assert cpu_levers.DEFAULT_SETTINGS[0] == 'baseline'


def test_flags_and_affinity_reach_the_worker_process(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
  args = _args(['--newer-jax-python=/opt/py/bin/python'])
  env = cpu_levers._environment(cpu_levers.BY_NAME['no_xnnpack'], '/tmp/cache')
  assert env['XLA_FLAGS'] == '--xla_dump_to=/tmp/x --xla_cpu_use_xnnpack=false'
  assert env['JAX_COMPILATION_CACHE_DIR'] == '/tmp/cache'
  one_cpu = cpu_levers._command(args, cpu_levers.BY_NAME['one_cpu'])
  assert one_cpu[:3] == ['taskset', '-c', '0'] and one_cpu[one_cpu.index('--worker') + 1] == 'one_cpu'
  assert cpu_levers._command(args, cpu_levers.BY_NAME['newer_jax'])[0] == '/opt/py/bin/python'
  assert cpu_levers._command(args, cpu_levers.BY_NAME['baseline'])[0] != '/opt/py/bin/python'


def test_summary_takes_medians_over_rounds_relative_to_baseline():
  settings = [cpu_levers.BY_NAME['baseline'], cpu_levers.BY_NAME['eigen_1thread']]
  run = lambda plain, mwnet=None: {'process_s': 1.0, 'versions': {}, 'steps': {
      'plain': {'wall_ms': [plain, plain + 10, plain + 300], 'cpu_ms': [plain / 2] * 3,
                'setup_s': 1.0},
      **({'mwnet': {'wall_ms': [mwnet], 'cpu_ms': [mwnet], 'setup_s': 1.0}} if mwnet else {})}}
  rounds = [{'baseline': run(100, 400), 'eigen_1thread': run(300)},
            {'baseline': run(200, 800), 'eigen_1thread': {'process_s': 2.0, 'error': 'boom'}},
            {'baseline': run(900, 600), 'eigen_1thread': run(500)}]
  table = cpu_levers.summarise(settings, rounds)
  base, eigen = table['baseline']['steps'], table['eigen_1thread']
  assert base['plain']['wall_ms'] == 210 and base['plain']['cpu_ms'] == 100
  assert base['mwnet']['wall_ms'] == 600
  assert eigen['steps']['plain']['wall_ms_per_round'] == [310, 510]
  assert eigen['steps']['plain']['wall_vs_baseline'] == pytest.approx(410 / 210)
  assert eigen['steps']['plain']['cpu_vs_baseline'] == pytest.approx(200 / 100)
  assert eigen['errors'] == ['boom'] and 'mwnet' not in eigen['steps']
  assert 'failed: boom' in cpu_levers.markdown(table)


def test_unknown_setting_is_a_clear_error(capsys):
  with pytest.raises(SystemExit):
    cpu_levers.main(['--settings=baseline,turbo'])
  assert "unknown settings ['turbo']" in capsys.readouterr().err
