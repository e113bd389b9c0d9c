"""Where a meta iteration's FLOPs go: XLA's optimized HLO, stage by stage.

Compiles the plain step, the exact MW-Net step and, for FaMUS with the shipped
settings, every program of the 'host' and 'ahead' dispatchers (and host's
smallest scope with a forward-mode tangent pass, `meta_scope0_jvp`, beside the
shipped transpose of the kept VJP), then counts
the FLOPs of every convolution and matrix product of the optimized HLO (2 ×
multiply-adds; they make ~all of XLA's `cost_analysis()` count) and groups
them by the stage that issued them (the core's `jax.named_scope`s:
train_forward, virtual_train, meta_train, tangent, sampler, actual_train) and
by pass (forward, or the backward of a forward: `transpose(...)`), with the
network's block. Ops outside the named stages (the plain step) count as
'other'; in a one-program step without a sampler the Virtual-Train backward
runs inside Meta-Train. Set against the floor of a meta iteration (DESIGN: training
forward + two backward passes + validation forward ≈ 6 forward passes, plus
the meta work of the scope) it shows what is above it.

  python -m experiments.benchmarks.meta_flops                       # ResNet-32, batch 100
  python -m experiments.benchmarks.meta_flops --model=fashion_resnet --width=8 --image-size=28 \\
      --channels=1 --batch=100

Writes experiments/results/meta_flops_<model>.json.
"""

import argparse
import collections
import functools
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from experiments import common
from famus_jax import famus, models

_DEF = re.compile(r'^\s*(?:ROOT\s+)?%(\S+)\s*=\s*\w+\[([\d,]*)\]')
STAGES = ('train_forward', 'virtual_train', 'meta_train', 'tangent', 'sampler',
          'actual_train')


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(',') if d]


def hlo_flops(hlo: str) -> list[tuple[str, int]]:
  """(op_name metadata, FLOPs) of every convolution and dot of an HLO module."""
  shapes = {m.group(1): _dims(m.group(2)) for m in map(_DEF.match, hlo.split('\n')) if m}
  out = []
  for line in hlo.split('\n'):
    m = _DEF.match(line)
    if not m or not (' convolution(' in line or ' dot(' in line):
      continue
    result = math.prod(_dims(m.group(2)))
    name = re.search(r'op_name="([^"]*)"', line)
    name = name.group(1) if name else ''
    if ' convolution(' in line:
      kernel = shapes[re.search(r'convolution\(%[^,\s]+,\s*%([^)\s]+)\)', line).group(1)]
      labels = re.search(r'dim_labels=\w+_(\w+)->', line).group(1)
      groups = re.search(r'feature_group_count=(\d+)', line)
      taps = math.prod(d for c, d in zip(labels, kernel) if c != 'o')
      out.append((name, 2 * result * taps // (int(groups.group(1)) if groups else 1)))
    else:
      lhs = shapes[re.search(r'dot\(%([^,\s]+),', line).group(1)]
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
      size = math.prod(lhs[i] for i in _dims(contracting.group(1))) if contracting else 1
      out.append((name, 2 * result * size))
  return out


def classify(op_name: str, blocks_per_group: int) -> tuple[str, str, str]:
  """(stage, pass, network part) of an HLO op from its op_name."""
  stage = next((s for s in STAGES[::-1] if f'/{s}' in op_name or op_name.startswith(s)), '')
  if not stage:
    stage = next((s for s in STAGES if s in op_name), 'other')
  # the tangent pass is forward-mode work, whichever way it is computed
  # (jax.jvp, or the transpose of the kept VJP: 'transpose(...)' names)
  kind = 'pass' if stage == 'tangent' else 'backward' if 'transpose(' in op_name else 'forward'
  block = re.search(r'/(stem|head|block(\d+))/', op_name)
  part = 'other'
  if block:
    part = (block.group(1) if block.group(2) is None else
            f'blocks {(int(block.group(2)) - 1) // blocks_per_group * blocks_per_group + 1}-'
            f'{((int(block.group(2)) - 1) // blocks_per_group + 1) * blocks_per_group}')
  return stage, kind, part


def breakdown(compiled, blocks_per_group: int) -> dict:
  rows = hlo_flops(compiled.as_text())
  by_stage = collections.Counter()
  by_part = collections.Counter()
  for name, flops in rows:
    stage, kind, part = classify(name, blocks_per_group)
    by_stage[f'{stage} {kind}'] += flops
    by_part[f'{stage} {kind} @ {part}'] += flops
  return {'gflop_cost_analysis': float(compiled.cost_analysis()['flops']) / 1e9,
          'gflop_conv_dot': sum(f for _, f in rows) / 1e9,
          'by_stage': {k: v / 1e9 for k, v in by_stage.most_common()},
          'by_stage_and_part': {k: v / 1e9 for k, v in by_part.most_common()}}


def programs(args, model, train, val):
  """name -> (function, example args) of the programs to break down."""
  base = common.step_parts(model, train['image'], args.num_classes).setup
  state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'][:2],
                                args.num_classes, base)
  out = {'plain': (lambda s, t: fj.plain_train_step(s, t, setup=base), (state, train)),
         'exact': (lambda s, t, v: fj.meta_train_step(s, t, v, setup=base),
                   (state, train, val))}
  for dispatch in ('host', 'ahead'):
    parts = common.step_parts(model, train['image'], args.num_classes, sampler='famus',
                              lambda1=0.1, lambda2=0.1, prune_levels=args.levels,
                              dispatch=dispatch, rate_cost='scope')
    setup = parts.setup
    st = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'][:2],
                               args.num_classes, setup)
    d = parts.dispatcher(famus.Compiler(donate=False))
    begin = None
    for name in d.program_names():
      fn = d.programs[name]
      example = ((st, train) if name == 'meta_begin' else
                 (st, begin, train, val) if name.startswith('meta_scope') else (st, train, val))
      out[name] = (fn, example)
      if name == 'meta_begin':
        begin = jax.jit(fn)(st, train)
    if dispatch == 'host':  # the smallest scope with a forward-mode tangent pass
      out['meta_scope0_jvp'] = (jax.jit(functools.partial(
          fj.meta_finish, setup=setup, scope=setup.sampler.scopes.scopes[0],
          tangent_pass='jvp')), (st, begin, train, val))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet32')
  parser.add_argument('--width', type=int, default=None)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--num-classes', type=int, default=10)
  parser.add_argument('--levels', type=int, default=0, help='meta.prune_levels')
  parser.add_argument('--blocks-per-group', type=int, default=5,
                      help='blocks reported together (ResNet-32: 5 per stage)')
  parser.add_argument('--only', default=None, help='comma-separated program names')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  kwargs = {} if args.width is None else {'width': args.width}
  model = models.get_model(args.model, num_classes=args.num_classes, **kwargs)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, args.channels)
  batch = lambda: {'image': jnp.asarray(rng.uniform(size=shape), jnp.float32),
                   'label': jnp.asarray(rng.integers(0, args.num_classes, args.batch),
                                        jnp.int32)}
  train, val = batch(), batch()
  result = {}
  for name, (fn, example) in programs(args, model, train, val).items():
    if args.only and name not in args.only.split(','):
      continue
    print(f'  compiling {name}', file=sys.stderr, flush=True)
    jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
    result[name] = breakdown(jitted.lower(*example).compile(), args.blocks_per_group)
    r = result[name]
    print(f'{name}: {r["gflop_cost_analysis"]:.1f} GFLOP (conv + dot {r["gflop_conv_dot"]:.1f})')
    for key, value in r['by_stage'].items():
      print(f'    {value:8.2f}  {key}')
  payload = {'model': args.model, 'width': args.width, 'batch': args.batch,
             'image_size': args.image_size, 'machine': common.machine(), 'programs': result}
  print('wrote', common.write_json(args.out or f'meta_flops_{args.model}.json', payload))
  return payload


if __name__ == '__main__':
  main()
