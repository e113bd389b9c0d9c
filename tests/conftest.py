"""Test-session settings: CPU, float32 by default, helpers importable, and one
persistent XLA compilation cache for the whole session.

Many tests build the same small programs (tiny MLPs and CNNs, the digits
configs) in separate tests, worker processes and `python -m famus_jax.main`
subprocesses; with the cache each distinct program compiles once per session.
The directory is chosen once, by the first process that imports this file (the
pytest-xdist controller), and inherited through the environment by the workers
and every subprocess they start. Set JAX_COMPILATION_CACHE_DIR to reuse a
directory across sessions.

The tests build many small programs once each, so compiling dominates their
time. XLA compiles without LLVM's optimisations
(`--xla_backend_optimization_level=0` unless XLA_FLAGS sets a level: a typical
meta-gradient test takes about two thirds of the CPU time, long training runs
about 8 % more) and, where this jaxlib knows the flag, with XLA:CPU's elemental
emitters instead of its fusion emitters (`--xla_cpu_use_fusion_emitters=false`
unless XLA_FLAGS names it): the digits meta-iteration programs compile in
30-50 % less time and run up to 1.3x slower at level 0, and the whole suite
takes a third less time (10:44 -> 7:19 wall, back to back on a 2-core CPU).
Neither flag is the product's: runs keep XLA's defaults.
"""

import os
import subprocess
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='famus_jax_tests_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()
ELEMENTAL_EMITTERS = '--xla_cpu_use_fusion_emitters=false'


def xla_accepts(flag: str) -> bool:
  """Whether this jaxlib's XLA knows `flag` (an unknown flag in XLA_FLAGS
  aborts the process at the first use of a device)."""
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}")
  probe = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env,
                         capture_output=True, timeout=300, check=False)
  return probe.returncode == 0


# Decided once, by the controller; the workers inherit its XLA_FLAGS.
if ('xla_cpu_use_fusion_emitters' not in os.environ['XLA_FLAGS']
    and 'PYTEST_XDIST_WORKER' not in os.environ and xla_accepts(ELEMENTAL_EMITTERS)):
  os.environ['XLA_FLAGS'] += ' ' + ELEMENTAL_EMITTERS
sys.path.insert(0, os.path.dirname(__file__))
if 'jax' in sys.modules:  # a plugin imported jax first: it read the environment already
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`-n 2`, `--dist worksteal` from setup.cfg), the tests
  marked `slow` are dealt out to the start of each worker's share: worksteal
  gives each worker a contiguous share of the collection and lets an idle worker
  steal tests not yet started, so the long end-to-end runs start early on every
  worker and the short tests fill in at the end. A run without -n keeps the file
  order."""
  workers = getattr(config, 'workerinput', {}).get('workercount', 0)
  if workers < 2:
    return
  slow = [item for item in items if item.get_closest_marker('slow')]
  fast = iter([item for item in items if not item.get_closest_marker('slow')])
  sizes, left = [], len(items)
  for i in range(workers):  # the shares worksteal sends first
    sizes.append(left // (workers - i))
    left -= sizes[-1]
  shares = [slow[i::workers] for i in range(workers)]
  items[:] = [item for share, size in zip(shares, sizes)
              for item in share + [next(fast) for _ in range(size - len(share))]] + list(fast)
