"""Where XLA:CPU spends a training step: time per HLO op class, from XLA's profiler.

Compiles the plain cross-entropy step and the exact MW-Net iteration (JVP
meta-gradient) of a model, records a few calls of each with `jax.profiler`,
reads the trace back (`jax.profiler.ProfileData`, no TensorFlow needed) and
sums the duration of every executed HLO instruction (one profiler event per
XLA:CPU thunk) by class, using the compiled HLO text to classify it:

  conv forward / conv backward-data / conv backward-filter, transposes (a
  fusion holding a transpose, with whatever producers XLA fused into it),
  batch norm (statistics and elementwise), other reductions, other
  elementwise fusions, copies/pads/slices, matmul, other.

A convolution counts as backward-filter when its window is larger than its
output (the window spans the activation), as backward-data when its input is
dilated or it comes from a transposed JVP; thread usage is the summed busy
time of all threads over the wall time.

  python -m experiments.cpu.cpu_profile                      # ResNet-32, batch 100
  python -m experiments.cpu.cpu_profile --quick              # width 4, batch 16
  python -m experiments.cpu.cpu_profile --conv-impl=xla      # a model option

Writes experiments/results/cpu_profile[_quick].json and .md.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from famus_jax import models
from experiments.benchmarks import benchmark_iteration as bench
from experiments import common

CLASSES = ('conv forward', 'conv backward-data', 'conv backward-filter',
           'transposes (with fused producers)', 'batch norm statistics',
           'batch norm elementwise', 'other reductions', 'other elementwise',
           'copies / pads / slices', 'matmul', 'other')
_INSTR = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$')
_COMP = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')
_MOVES = {'parameter', 'transpose', 'copy', 'bitcast', 'reshape', 'slice', 'pad',
          'concatenate', 'broadcast', 'constant', 'tuple', 'get-tuple-element',
          'reverse', 'dynamic-slice', 'dynamic-update-slice'}


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(computations: name -> [(opcode, line)], instructions: name -> (opcode, line, comp))."""
  comps, instrs, current = collections.defaultdict(list), {}, None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m and current is not None:
      comps[current].append((m.group(3), line))
      instrs[m.group(1)] = (m.group(3), line, current)
      continue
    c = _COMP.match(line)
    if c and line.rstrip().endswith('{'):
      current = c.group(1)
  return comps, instrs


def _called_ops(line: str, comps: dict, depth: int = 0) -> list:
  out = []
  for callee in re.findall(r'(?:calls|to_apply|body|condition)=%([\w.\-]+)', line):
    for opcode, sub in comps.get(callee, []):
      out.append((opcode, sub))
      if depth < 4:
        out.extend(_called_ops(sub, comps, depth + 1))
  return out


def _spatial(shape: str) -> int:
  dims = [int(d) for d in re.findall(r'\d+', shape.split('{')[0].split('[', 1)[1])]
  return int(np.prod(dims[1:-1])) if len(dims) > 2 else 1


def conv_class(line: str) -> str:
  """Forward, backward-data or backward-filter, from the convolution's window."""
  shape = line.split(' = ', 1)[1].split(' ', 1)[0]
  window = re.search(r'window=\{size=([\dx]+)', line)
  size = int(np.prod([int(v) for v in window.group(1).split('x')])) if window else 1
  if size > _spatial(shape):
    return 'conv backward-filter'
  if 'lhs_dilate' in line or 'transpose(' in line:
    return 'conv backward-data'
  return 'conv forward'


def classify(name: str, comps: dict, instrs: dict) -> str:
  """The op class of one executed HLO instruction."""
  opcode, line, _ = instrs[name]
  ops = [(opcode, line)] + _called_ops(line, comps)
  convs = [sub for op, sub in ops if op == 'convolution']
  if convs:
    return conv_class(convs[0])
  if any(op == 'dot' for op, _ in ops):
    return 'matmul'
  batch_norm = any('/bn' in sub for _, sub in ops)
  if any(op == 'reduce' for op, _ in ops):
    return 'batch norm statistics' if batch_norm else 'other reductions'
  if any(op == 'transpose' for op, _ in ops):
    return 'transposes (with fused producers)'
  if all(op in _MOVES for op, _ in ops):
    return 'copies / pads / slices'
  if opcode in ('fusion', 'add', 'multiply', 'select', 'maximum', 'subtract'):
    return 'batch norm elementwise' if batch_norm else 'other elementwise'
  return 'other'


def trace_events(fn, carry, args, calls: int):
  """Profiler events of `calls` calls: ({thread: [(name, ns)]}, wall seconds per call)."""
  for _ in range(2):
    carry = jax.block_until_ready(fn(carry, *args))[0]
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      start = time.perf_counter()
      for _ in range(calls):
        carry = jax.block_until_ready(fn(carry, *args))[0]
      wall = (time.perf_counter() - start) / calls
    path = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)[0]
    profile = jax.profiler.ProfileData.from_file(path)
  threads = collections.defaultdict(list)
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        threads[line.name].append((event.name, event.duration_ns))
  return threads, wall


def profile_step(fn, carry, args, calls: int) -> dict:
  """Per-class milliseconds per call, threads used and busy cores for one program."""
  comps, instrs = parse_hlo(fn.lower(carry, *args).compile().as_text())
  threads, wall = trace_events(fn, carry, args, calls)
  per_class = collections.Counter()
  per_op = collections.Counter()
  busy = {}
  for thread, events in threads.items():
    ns = 0
    for name, dur in events:
      if name in instrs:
        per_class[classify(name, comps, instrs)] += dur
        per_op[name] += dur
        ns += dur
    if ns:
      busy[thread] = ns / calls / 1e6
  total = sum(per_class.values()) / calls / 1e6
  top = [{'op': n, 'class': classify(n, comps, instrs), 'ms': d / calls / 1e6,
          'fused_ops': 1 + len(_called_ops(instrs[n][1], comps))}
         for n, d in per_op.most_common(15)]
  return {
      'wall_ms': wall * 1e3, 'op_ms_total': total,
      'cores_busy': total / (wall * 1e3), 'threads_with_ops': len(busy),
      'busy_ms_by_thread': busy,
      'classes': {c: {'ms': per_class[c] / calls / 1e6,
                      'share': per_class[c] / max(sum(per_class.values()), 1)}
                  for c in CLASSES if per_class[c]},
      'top_ops': top,
  }


def markdown(payload: dict) -> str:
  rows = ['| op class | ' + ' | '.join(f'{k} ms (share)' for k in payload['steps']) + ' |',
          '|---|' + '---:|' * len(payload['steps'])]
  for c in CLASSES:
    cells = []
    for step in payload['steps'].values():
      v = step['classes'].get(c)
      cells.append(f'{v["ms"]:.1f} ({100 * v["share"]:.0f} %)' if v else '–')
    rows.append(f'| {c} | ' + ' | '.join(cells) + ' |')
  for key, label in (('op_ms_total', 'sum of op time'), ('wall_ms', 'wall time per call'),
                     ('cores_busy', 'cores busy (op time / wall)'),
                     ('threads_with_ops', 'threads running ops')):
    rows.append(f'| {label} | ' + ' | '.join(
        f'{s[key]:.2f}' if isinstance(s[key], float) else str(s[key])
        for s in payload['steps'].values()) + ' |')
  m = payload['machine']
  head = (f'# XLA:CPU profile: {payload["model"]}, batch {payload["batch"]}, '
          f'conv_impl={payload["conv_impl"]}\n\n'
          f'jax {m["jax_version"]}, {m["cpu_count"]} CPUs, load average '
          f'{payload["load_average"]} (a shared machine: other jobs ran during the run).\n'
          f'Command: `{payload["command"]}`\n\n')
  return head + '\n'.join(rows) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet32')
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--calls', type=int, default=3)
  parser.add_argument('--conv-impl', default=None, help="model option conv_impl")
  parser.add_argument('--quick', action='store_true', help='width 4, batch 16, 1 call')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  args.num_classes = 10
  kwargs = {'width': 4} if args.quick else {}
  if args.quick:
    args.batch, args.calls = 16, 1
  if args.conv_impl:
    kwargs['conv_impl'] = args.conv_impl
  model = models.get_model(args.model, num_classes=10, **kwargs)
  rng = np.random.default_rng(0)
  batch = lambda: {'image': jnp.asarray(rng.uniform(size=(args.batch, 32, 32, 3)), jnp.float32),
                   'label': jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
  train, val = batch(), batch()
  steps = {}
  for variant in (bench.Variant('plain', None), bench.Variant('mwnet_jvp', 'mwnet', 'jvp')):
    parts, state = bench.build(args, variant, model, train['image'])
    if variant.method is None:
      fn, fargs = fj.jit_plain_train_step(parts.setup), (train,)
    else:
      fn, fargs = fj.jit_meta_train_step(parts.setup), (train, val)
    steps[variant.name] = profile_step(fn, state, fargs, args.calls)
    print(f'{variant.name}: {steps[variant.name]["wall_ms"]:.0f} ms', file=sys.stderr)
  payload = {'model': args.model, 'batch': args.batch, 'calls': args.calls,
             'quick': args.quick, 'conv_impl': getattr(model, 'conv_impl', 'xla'),
             'load_average': [round(v, 2) for v in os.getloadavg()],
             'command': 'python -m experiments.cpu.cpu_profile ' + ' '.join(sys.argv[1:]
                                                                       if argv is None else argv),
             'machine': common.machine(), 'steps': steps}
  name = args.out or f'cpu_profile{"_quick" if args.quick else ""}'
  path = common.write_json(name + '.json', payload)
  with open(path[:-5] + '.md', 'w') as f:
    f.write(markdown(payload))
  print(markdown(payload))
  print('wrote', path)
  return payload


if __name__ == '__main__':
  main()
