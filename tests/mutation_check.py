"""Mutation check: plant one-line bugs in a copy of the repository and confirm
that the FaMUS / core / noise tests fail for each (not collected by pytest).

Each mutation names a file, a regular expression that must match exactly once
(by content, so it survives moved lines) and its replacement. The script copies
the repository (the working tree, or with --head the last commit) into a
temporary directory, applies one mutation at a time, runs the relevant test
files there with `pytest -x -q`, restores the file, and prints a table
(bug, caught?, first failing test). The table is also written to
experiments/results/mutation_check.json.

Usage:
  python tests/mutation_check.py [--head | --rev COMMIT] [--only NAME[,NAME]] [--baseline]
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMUS, CORE, NOISE = 'tests/test_famus.py', 'tests/test_core.py', 'tests/test_data_noise.py'
DISPATCH, AHEAD = 'tests/test_dispatch.py', 'tests/test_dispatch_ahead.py'


class Mutation(NamedTuple):
  name: str
  path: str
  pattern: str      # regular expression, must match exactly once
  replacement: str
  tests: tuple


MUTATIONS = (
    Mutation('lambda2_sign', 'famus_jax/famus/samplers.py',
             r'a \+ self\.lambda2 \* b', 'a - self.lambda2 * b', (FAMUS,)),
    Mutation('gumbel_no_tau', 'famus_jax/famus/gumbel.py',
             r'softmax\(\(logits \+ noise\) / tau, axis', 'softmax((logits + noise), axis', (FAMUS,)),
    Mutation('gate_value_leaks_into_lookahead', 'famus_jax/core/lookahead.py',
             r'return r \* g \+ jax\.lax\.stop_gradient\(\(1\.0 - r\) \* g\)',
             'return r * g', (FAMUS, CORE)),
    Mutation('rate_loss_sign', 'famus_jax/famus/samplers.py',
             r'd_gates \+ self\.lambda1 \* d_rate', 'd_gates - self.lambda1 * d_rate',
             (FAMUS,)),
    Mutation('pooled_over_wrong_axes', 'famus_jax/famus/pooling.py',
             r'axis=tuple\(range\(grad\.ndim - 1\)\)', 'axis=tuple(range(1, grad.ndim))',
             (FAMUS,)),
    Mutation('bn_stats_from_validation_forward', 'famus_jax/core/train_step.py',
             r'params=actual\.params, batch_stats=actual\.batch_stats',
             "params=actual.params, batch_stats=forward_lib.apply_model(setup.apply_fn, "
             "state.params, state.batch_stats, val_batch['image'], train=True)[1]", (CORE,)),
    Mutation('pairflip_map_off_by_one', 'famus_jax/data/noise.py',
             r'\{i: \(i \+ 1\) % num_classes', '{i: (i + 2) % num_classes', (NOISE,)),
    Mutation('cifar100_map_off_by_one', 'famus_jax/data/noise.py',
             r'np\.roll\(members, -1\)', 'np.roll(members, -2)', (NOISE,)),
    Mutation('scope_level_off_by_one', 'famus_jax/famus/dispatch.py',
             r'next\(j for j, b in enumerate\(starts\) if layer\.block >= b\)',
             'next(j for j, b in enumerate(starts) if layer.block > b or j == len(starts) - 1)',
             (DISPATCH,)),
    # each dispatcher (tests/test_dispatch.py: every dispatcher equals the one-program step)
    Mutation('one_program_validates_on_the_training_batch', 'famus_jax/famus/dispatch.py',
             r"(?<=core\.meta_train_step, self\.setup\)\}\n\n  def __call__\(self, state, batch, "
             r"val_batch\):\n    return self\.run\('meta', state, batch, )val_batch",
             'batch', (DISPATCH,)),
    Mutation('switch_one_scope_too_small', 'famus_jax/famus/dispatch.py',
             r'jax\.lax\.switch\(begin\.selection\.level,',
             'jax.lax.switch(jnp.maximum(begin.selection.level - 1, 0),', (DISPATCH,)),
    Mutation('host_runs_a_larger_scope', 'famus_jax/famus/dispatch.py',
             r"return f'meta_scope\{int\(jax\.device_get\(begin\.selection\.level\)\)\}'",
             "return f'meta_scope{min(int(jax.device_get(begin.selection.level)) + 1, "
             "len(self.scopes) - 1)}'", (DISPATCH,)),
    Mutation('host_tangent_pass_runs_the_forward_again', 'famus_jax/famus/dispatch.py',
             r"scope=scope, tangent_pass='transpose'\)", "scope=scope, tangent_pass='jvp')",
             (DISPATCH,)),
    Mutation('host_gates_from_other_noise', 'famus_jax/core/train_step.py',
             r'begin\.virtual\.grads, sampler_rng\)',
             'begin.virtual.grads, jax.random.fold_in(sampler_rng, 1))', (DISPATCH,)),
    Mutation('ahead_runs_the_full_scope', 'famus_jax/famus/dispatch.py',
             r'return f\'meta_ahead\{int\(jax\.device_get\(state\.sampler_state\["level"\]\)\)\}\'',
             "return f'meta_ahead{len(self.scopes) - 1}'", (DISPATCH,)),
    Mutation('ahead_next_draw_with_the_old_eta', 'famus_jax/famus/dispatch.py',
             r'upcoming = _draw\(sampler, new_state\.sampler_params,',
             'upcoming = _draw(sampler, state.sampler_params,', (AHEAD,)),
)

IGNORE = shutil.ignore_patterns('.git', '__pycache__', '*.egg-info', '.pytest_cache',
                                'results', '*.png', '*.npz')


def copy_repository(dest: str, rev: str = '') -> None:
  """The working tree (or the commit `rev`) into `dest`."""
  if rev:
    os.makedirs(dest)
    archive = subprocess.run(['git', 'archive', rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', dest], input=archive, check=True)
  else:
    shutil.copytree(ROOT, dest, ignore=IGNORE)


def apply(root: str, mutation: Mutation) -> str:
  """Applies the mutation; returns the original text. Raises if it does not match once."""
  path = os.path.join(root, mutation.path)
  with open(path) as f:
    original = f.read()
  mutated, count = re.subn(mutation.pattern, lambda _: mutation.replacement, original)
  if count != 1:
    raise ValueError(f'{mutation.name}: pattern {mutation.pattern!r} matches {count} '
                     f'times in {mutation.path}; update the mutation to the current code.')
  with open(path, 'w') as f:
    f.write(mutated)
  return original


def run_tests(root: str, tests: tuple, timeout: int, first_failure: bool = True,
              deselect: tuple = ()) -> dict:
  """pytest -q (-x) in the copy; the copy's package shadows the installed one."""
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
  start = time.time()
  flags = ['-x'] if first_failure else []
  for node in deselect:
    flags += ['--deselect', node]
  try:
    proc = subprocess.run([sys.executable, '-m', 'pytest', *flags, '-q', '-p', 'no:cacheprovider',
                           *tests], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output, rc = proc.stdout + proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    out = e.stdout or b''
    output, rc = out.decode() if isinstance(out, bytes) else out, -1
  failed = re.findall(r'^(?:FAILED|ERROR) (\S+)', output, re.M)
  return {'returncode': rc, 'failed': failed, 'seconds': round(time.time() - start, 1),
          'tail': output.strip().splitlines()[-1] if output.strip() else ''}


def check_copy_is_imported(root: str) -> None:
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
  where = subprocess.run([sys.executable, '-c', 'import famus_jax; print(famus_jax.__file__)'],
                         cwd=root, env=env, capture_output=True, text=True, check=True).stdout
  if not os.path.realpath(where.strip()).startswith(os.path.realpath(root)):
    raise RuntimeError(f'the copy is not the package under test: famus_jax from {where}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--head', action='store_true',
                      help='copy the last commit instead of the working tree')
  parser.add_argument('--rev', default='', help='copy this commit instead of the working tree')
  parser.add_argument('--only', default='', help='comma-separated mutation names')
  parser.add_argument('--baseline', action='store_true',
                      help='first run the test files unmutated; tests failing there are '
                           'left out of the mutation runs (and reported)')
  parser.add_argument('--timeout', type=int, default=1800, help='seconds per pytest run')
  parser.add_argument('--results-dir', default=os.path.join(ROOT, 'experiments', 'results'))
  args = parser.parse_args(argv)
  names = {n for n in args.only.split(',') if n}
  unknown = names - {m.name for m in MUTATIONS}
  if unknown:
    parser.error(f'unknown mutation(s) {sorted(unknown)}; known: '
                 f'{", ".join(m.name for m in MUTATIONS)}')
  chosen = [m for m in MUTATIONS if not names or m.name in names]
  rows, baseline = [], None
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'repo')
    rev = args.rev or ('HEAD' if args.head else '')
    if rev:
      rev = subprocess.run(['git', 'rev-parse', rev], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.strip()
    copy_repository(root, rev)
    check_copy_is_imported(root)
    if args.baseline:
      files = tuple(sorted({t for m in chosen for t in m.tests}))
      baseline = run_tests(root, files, args.timeout, first_failure=False)
      print(f'baseline {files}: rc={baseline["returncode"]} {baseline["tail"]}; failing '
            f'without a mutation (left out below): {baseline["failed"]}', flush=True)
    for m in chosen:
      original = apply(root, m)
      try:
        result = run_tests(root, m.tests, args.timeout,
                           deselect=tuple(baseline['failed']) if baseline else ())
      finally:
        with open(os.path.join(root, m.path), 'w') as f:
          f.write(original)
      caught = result['returncode'] == 1 and bool(result['failed'])
      rows.append({'bug': m.name, 'file': m.path, 'replacement': m.replacement,
                   'tests_run': list(m.tests), 'caught': caught,
                   'caught_by': result['failed'][0] if result['failed'] else None,
                   'returncode': result['returncode'], 'seconds': result['seconds']})
      print(f'{m.name:34s} {"caught" if caught else "MISSED"} '
            f'{rows[-1]["caught_by"] or result["tail"]} ({result["seconds"]} s)', flush=True)
  width = max(len(r['bug']) for r in rows)
  print(f'\n{"bug":{width}s}  caught  by')
  for r in rows:
    print(f'{r["bug"]:{width}s}  {"yes" if r["caught"] else "NO":6s}  {r["caught_by"] or "-"}')
  os.makedirs(args.results_dir, exist_ok=True)
  payload = {'source': f'commit {rev}' if rev else 'working tree',
             'machine': {'platform': platform.platform(), 'python': platform.python_version(),
                         'cpus': os.cpu_count()},
             'baseline': baseline, 'mutations': rows,
             'all_caught': all(r['caught'] for r in rows)}
  out = os.path.join(args.results_dir, 'mutation_check.json')
  if names:  # a partial run does not overwrite the full table
    out = os.path.join(args.results_dir, 'mutation_check_partial.json')
  with open(out, 'w') as f:
    json.dump(payload, f, indent=1)
  print(f'wrote {out}')
  return 0 if payload['all_caught'] else 1


if __name__ == '__main__':
  sys.exit(main())
