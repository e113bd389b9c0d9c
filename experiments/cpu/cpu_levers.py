"""CPU levers of the ResNet-32 steps, one process per setting.

XLA reads its flags (XLA_FLAGS) and sizes its thread pool (from the CPU
affinity) once per process, so every setting runs in a fresh process: XLA
flags, one CPU (`taskset -c 0`), the model options conv_impl / norm_impl,
the float32 matmul precision, and PyTorch at 1 and 2 threads
(experiments/cpu/torch_resnet32.py, when torch is importable). Rounds are
interleaved (each setting once per round, in turn); inside a process each
step is warmed up, then timed `calls` times (median). Reported per setting
and step: the median over rounds of wall ms and process CPU ms per call
(CPU time is the fairer measure while other jobs run), each relative to the
`baseline` setting of the same run. The steps are those of
experiments/cpu/cpu_vs_torch.py: the plain cross-entropy step and the exact
MW-Net iteration (JVP meta-gradient). A persistent compilation cache (a
temporary directory) spares the later rounds most of the compile time.

  python -m experiments.cpu.cpu_levers             # ResNet-32, batch 100 (~10 min, quiet machine)
  python -m experiments.cpu.cpu_levers --quick     # depth 8, width 4, batch 16: every setting runs
  python -m experiments.cpu.cpu_levers --settings=baseline,fused_bn --rounds=5

Writes experiments/results/cpu_levers[_quick].json.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

# The repository root: workers run `python -m experiments.cpu.cpu_levers` from it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULT_TAG = 'CPU_LEVERS_RESULT '


@dataclasses.dataclass(frozen=True)
class Setting:
  """One process configuration; the empty defaults are the baseline's."""
  name: str
  what: str
  steps: tuple = ('plain', 'mwnet')
  xla_flags: tuple = ()
  cpus: Optional[str] = None          # taskset -c <cpus>
  model: tuple = ()                   # CifarResNet attributes (key, value)
  precision: Optional[str] = None     # jax_default_matmul_precision
  torch_threads: Optional[int] = None  # a PyTorch row at this many threads
  newer_jax: bool = False             # run under --newer-jax-python's interpreter


BASE_MODEL = (('conv_impl', 'cpu'), ('norm_impl', 'flax'))
SETTINGS = [
    Setting('baseline', 'famus_jax defaults on CPU (conv_impl=cpu, norm_impl=flax), 2 threads'),
    Setting('conv_xla', 'conv_impl=xla', model=(('conv_impl', 'xla'),)),
    Setting('fused_bn', 'norm_impl=fused (BN + add + ReLU, custom_jvp)',
            model=(('norm_impl', 'fused'),)),
    Setting('one_cpu', 'taskset -c 0 (XLA: 1 thread)', cpus='0'),
    Setting('eigen_1thread', '--xla_cpu_multi_thread_eigen=false', ('plain',),
            xla_flags=('--xla_cpu_multi_thread_eigen=false',)),
    Setting('no_thunks', '--xla_cpu_use_thunk_runtime=false', ('plain',),
            xla_flags=('--xla_cpu_use_thunk_runtime=false',)),
    Setting('no_xnnpack', '--xla_cpu_use_xnnpack=false', ('plain',),
            xla_flags=('--xla_cpu_use_xnnpack=false',)),
    Setting('xnn_greedy', '--xla_cpu_experimental_xnn_graph_fusion_mode='
            'XNN_GRAPH_FUSION_MODE_GREEDY', ('plain',),
            xla_flags=('--xla_cpu_experimental_xnn_graph_fusion_mode='
                       'XNN_GRAPH_FUSION_MODE_GREEDY',)),
    Setting('no_fusion_emitters', '--xla_cpu_use_fusion_emitters=false', ('plain',),
            xla_flags=('--xla_cpu_use_fusion_emitters=false',)),
    Setting('concurrency_scheduler', '--xla_cpu_enable_concurrency_optimized_scheduler=true',
            ('plain',), xla_flags=('--xla_cpu_enable_concurrency_optimized_scheduler=true',)),
    Setting('onednn', '--xla_cpu_use_onednn=true', ('plain',),
            xla_flags=('--xla_cpu_use_onednn=true',)),
    Setting('precision_highest', 'jax_default_matmul_precision=highest', ('plain',),
            precision='highest'),
    Setting('precision_bf16', 'jax_default_matmul_precision=bfloat16', ('plain',),
            precision='bfloat16'),
    Setting('newer_jax', 'baseline under the interpreter of --newer-jax-python (its jax)',
            newer_jax=True),
    Setting('torch_1thread', 'PyTorch, torch.set_num_threads(1)', torch_threads=1),
    Setting('torch_2threads', 'PyTorch, torch.set_num_threads(2)', torch_threads=2),
]
BY_NAME = {s.name: s for s in SETTINGS}
# The full mode's sweep (about 10 min on a quiet 2-core machine); the others on request.
DEFAULT_SETTINGS = ('baseline', 'conv_xla', 'fused_bn', 'one_cpu', 'eigen_1thread',
                    'no_thunks', 'no_xnnpack', 'torch_1thread', 'torch_2threads')
# Rough quiet-machine seconds per process at full size (build + compile + calls), for the
# estimate: first round, and later rounds (compilation cache).
EST_SECONDS = {'start': 4, 'jax_plain': 20, 'jax_mwnet': 30, 'torch_plain': 3, 'torch_mwnet': 9}
EST_CACHED = {'start': 4, 'jax_plain': 5, 'jax_mwnet': 10, 'torch_plain': 3, 'torch_mwnet': 9}
QUICK_SHAPE = dict(depth=8, width=4, batch=16)


# ----------------------------------------------------------------------------- worker


def _worker_batches(args):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  batch = lambda: {'image': jnp.asarray(rng.uniform(size=(args.batch, 32, 32, 3)), jnp.float32),
                   'label': jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
  return batch(), batch()


def _worker_calls(args, setting: Setting) -> dict:
  """step -> call() for this process's setting (JAX or PyTorch)."""
  from experiments.cpu import cpu_vs_torch  # pylint: disable=import-outside-toplevel
  train, val = _worker_batches(args)
  args.steps = list(setting.steps)
  if setting.torch_threads is not None:
    args.torch_threads = setting.torch_threads
    rows = cpu_vs_torch.torch_rows(args, train, val)
    rows.pop('_params', None)
    if not rows:
      raise RuntimeError('torch is not importable')
    return {name.split('_', 1)[1]: call for name, (call, _) in rows.items()}
  import jax  # pylint: disable=import-outside-toplevel
  from famus_jax import models  # pylint: disable=import-outside-toplevel
  if setting.precision:
    jax.config.update('jax_default_matmul_precision', setting.precision)
  model = models.get_model('resnet32', num_classes=10, depth=args.depth, width=args.width,
                           **dict(BASE_MODEL + setting.model))
  return {step: cpu_vs_torch.jax_step(args, model, step, train, val, with_flops=False)[0]
          for step in setting.steps}


def _versions(setting: Setting) -> dict:
  if setting.torch_threads is not None:
    import torch  # pylint: disable=import-outside-toplevel
    return {'torch': torch.__version__}
  import jax  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  return {'jax': jax.__version__, 'flax': flax.__version__, 'python': sys.version.split()[0]}


def run_worker(args, setting: Setting) -> dict:
  """Times this process's steps: step -> {'wall_ms': [...], 'cpu_ms': [...], 'setup_s'}."""
  out = {'_versions': _versions(setting)}
  for step, call in _worker_calls(args, setting).items():
    start = time.perf_counter()
    for _ in range(args.warmup):
      call()
    row = {'setup_s': time.perf_counter() - start, 'wall_ms': [], 'cpu_ms': []}
    for _ in range(args.calls[step]):
      wall, cpu = time.perf_counter(), time.process_time()
      call()
      row['wall_ms'].append((time.perf_counter() - wall) * 1e3)
      row['cpu_ms'].append((time.process_time() - cpu) * 1e3)
    out[step] = row
  return out


# ----------------------------------------------------------------------------- parent


def _command(args, setting: Setting) -> list:
  python = args.newer_jax_python if setting.newer_jax else sys.executable
  cmd = [python, '-m', 'experiments.cpu.cpu_levers', '--worker', setting.name,
         '--depth', str(args.depth), '--width', str(args.width), '--batch', str(args.batch),
         '--warmup', str(args.warmup), '--plain-calls', str(args.calls['plain']),
         '--mwnet-calls', str(args.calls['mwnet'])]
  return ['taskset', '-c', setting.cpus, *cmd] if setting.cpus else cmd


def _environment(setting: Setting, cache_dir: str) -> dict:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  flags = ' '.join((os.environ.get('XLA_FLAGS', ''),) + setting.xla_flags).strip()
  if flags:
    env['XLA_FLAGS'] = flags
  return env


def run_process(args, setting: Setting, cache_dir: str) -> dict:
  """One worker process: its result, or {'error': last lines of its output}."""
  start = time.perf_counter()
  proc = subprocess.run(_command(args, setting), env=_environment(setting, cache_dir),
                        capture_output=True, text=True, timeout=args.process_timeout,
                        check=False, cwd=REPO_ROOT)
  seconds = time.perf_counter() - start
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_TAG):
      steps = json.loads(line[len(RESULT_TAG):])
      return {'process_s': seconds, 'versions': steps.pop('_versions'), 'steps': steps}
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {'process_s': seconds, 'error': ' | '.join(tail) or f'exit status {proc.returncode}'}


def estimate_seconds(settings, rounds: int) -> float:
  """Rough full-size, quiet-machine seconds for `rounds` rounds."""
  total = 0.0
  for s in settings:
    kind = 'torch' if s.torch_threads is not None else 'jax'
    for est, times in ((EST_SECONDS, 1), (EST_CACHED, rounds - 1)):
      total += times * (est['start'] + sum(est[f'{kind}_{step}'] for step in s.steps))
  return total


def summarise(settings, rounds: list) -> dict:
  """setting -> step -> medians over rounds (of per-process medians) and ratios to baseline."""
  table = {}
  for s in settings:
    runs = [r[s.name] for r in rounds]
    errors = [r['error'] for r in runs if 'error' in r]
    versions = next((r['versions'] for r in runs if 'versions' in r), {})
    table[s.name] = {'what': s.what, 'errors': errors, 'versions': versions,
                     'process_s': [r['process_s'] for r in runs], 'steps': {}}
    for step in s.steps:
      per_round = [r['steps'][step] for r in runs if 'steps' in r]
      if not per_round:
        continue
      table[s.name]['steps'][step] = {
          'wall_ms': statistics.median(statistics.median(p['wall_ms']) for p in per_round),
          'cpu_ms': statistics.median(statistics.median(p['cpu_ms']) for p in per_round),
          'wall_ms_per_round': [statistics.median(p['wall_ms']) for p in per_round],
          'cpu_ms_per_round': [statistics.median(p['cpu_ms']) for p in per_round],
          'setup_s_first': per_round[0]['setup_s']}
  base = table.get('baseline', {}).get('steps', {})
  for row in table.values():
    for step, cell in row['steps'].items():
      if step in base:
        cell['wall_vs_baseline'] = cell['wall_ms'] / base[step]['wall_ms']
        cell['cpu_vs_baseline'] = cell['cpu_ms'] / base[step]['cpu_ms']
  return table


def markdown(table: dict) -> str:
  lines = ['| setting | step | wall ms | process CPU ms | wall × baseline | CPU × baseline |',
           '|---|---|---:|---:|---:|---:|']
  for name, row in table.items():
    for step, c in row['steps'].items():
      lines.append(f'| {name}: {row["what"]} | {step} | {c["wall_ms"]:,.1f} | {c["cpu_ms"]:,.1f} '
                   f'| {c.get("wall_vs_baseline", float("nan")):.2f} '
                   f'| {c.get("cpu_vs_baseline", float("nan")):.2f} |')
    if row['errors']:
      lines.append(f'| {name}: {row["what"]} | — | failed: {row["errors"][0][:120]} | | | |')
  return '\n'.join(lines)


def run_sweep(args, settings) -> dict:
  """Interleaved rounds of one process per setting: the JSON payload."""
  print(f'{len(settings)} settings × {args.rounds} rounds; estimate at full size on a quiet '
        f'2-core machine: {estimate_seconds(settings, args.rounds) / 60:.0f} min; no round '
        f'starts that would pass --budget-min={args.budget_min:g}', flush=True)
  load_before = os.getloadavg()
  rounds, start = [], time.perf_counter()
  with tempfile.TemporaryDirectory(prefix='cpu_levers_cache_') as cache_dir:
    for r in range(args.rounds):
      elapsed = time.perf_counter() - start
      if r and elapsed + last > args.budget_min * 60:
        print(f'  stopping after {r} rounds ({elapsed / 60:.1f} min; one more would pass '
              f'--budget-min)', flush=True)
        break
      result = {}
      for s in settings:
        result[s.name] = run_process(args, s, cache_dir)
        status = result[s.name].get('error', 'ok')
        print(f'  round {r + 1}/{args.rounds} {s.name:<22s} {result[s.name]["process_s"]:6.1f} s'
              f'  {status}', flush=True)
      rounds.append(result)
      last = time.perf_counter() - start - elapsed
  table = summarise(settings, rounds)
  return {'rounds_done': len(rounds), 'minutes': (time.perf_counter() - start) / 60,
          'table': table, 'load_average_before': load_before,
          'load_average_after': os.getloadavg(), 'markdown': markdown(table)}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--settings', default=','.join(DEFAULT_SETTINGS),
                      help='comma-separated, from: ' + ', '.join(BY_NAME))
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--budget-min', type=float, default=10.0,
                      help='start no further round when the mean round time would pass this')
  parser.add_argument('--depth', type=int, default=32)
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--warmup', type=int, default=2, help='calls before timing (1st compiles)')
  parser.add_argument('--plain-calls', type=int, default=5)
  parser.add_argument('--mwnet-calls', type=int, default=3)
  parser.add_argument('--process-timeout', type=float, default=300.0,
                      help='seconds before a worker process is abandoned')
  parser.add_argument('--quick', action='store_true',
                      help='depth 8, width 4, batch 16, 2 rounds, 2 calls: checks that every '
                      'setting (all of them, not only the default sweep) runs')
  parser.add_argument('--newer-jax-python', default=None,
                      help='a Python interpreter with a newer jax (and flax, optax, chex, '
                      'ml-collections): adds the newer_jax setting')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  if args.quick:
    args.__dict__.update(QUICK_SHAPE, rounds=2, plain_calls=2, mwnet_calls=2,
                         warmup=1, budget_min=60.0)
    if args.settings == ','.join(DEFAULT_SETTINGS):
      args.settings = ','.join(BY_NAME)
  args.calls = {'plain': args.plain_calls, 'mwnet': args.mwnet_calls}
  args.num_classes = 10
  return parser, args


def main(argv=None):
  parser, args = _parse(argv)
  if args.worker:
    print(RESULT_TAG + json.dumps(run_worker(args, BY_NAME[args.worker])), flush=True)
    return None
  unknown = [n for n in args.settings.split(',') if n not in BY_NAME]
  if unknown:
    parser.error(f'unknown settings {unknown}; known: {", ".join(BY_NAME)}')
  names = args.settings.split(',')
  if args.newer_jax_python and 'newer_jax' not in names:
    names.insert(names.index('baseline') + 1 if 'baseline' in names else 0, 'newer_jax')
  if 'newer_jax' in names and not args.newer_jax_python:
    print('newer_jax skipped: no --newer-jax-python given', file=sys.stderr)
    names.remove('newer_jax')
  settings = [BY_NAME[n] for n in names]
  from experiments import common  # pylint: disable=import-outside-toplevel
  payload = {'model': 'resnet32', 'depth': args.depth, 'width': args.width,
             'batch': args.batch, 'quick': args.quick, 'calls': args.calls,
             'warmup': args.warmup, 'machine': common.machine(),
             'settings': [dataclasses.asdict(s) for s in settings],
             **run_sweep(args, settings)}
  try:
    import torch  # pylint: disable=import-outside-toplevel
    payload['torch_version'] = torch.__version__
  except ImportError:
    payload['torch_version'] = None
  print(f'\nResNet-{args.depth} width {args.width}, batch {args.batch}, '
        f'{payload["rounds_done"]} rounds in {payload["minutes"]:.1f} min, '
        f'load average {payload["load_average_before"][0]:.1f} -> '
        f'{payload["load_average_after"][0]:.1f} ({os.cpu_count()} CPUs)\n')
  print(payload['markdown'])
  name = args.out or f'cpu_levers{"_quick" if args.quick else ""}.json'
  print('wrote', common.write_json(name, payload))
  return payload


if __name__ == '__main__':
  main()
