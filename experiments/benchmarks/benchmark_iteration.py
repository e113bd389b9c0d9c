"""Time of one training iteration: plain CE step vs full meta iterations.

Measures, in one process and one run, a plain cross-entropy step and a full
meta iteration (Virtual-Train + Meta-Train + Actual-Train) for each variant on
the same model and batch, after warm-up (median of repeats), and reports the
ratios to the plain step and XLA's FLOP count of each compiled program.

  python -m experiments.benchmarks.benchmark_iteration --quick
  python -m experiments.benchmarks.benchmark_iteration --model=resnet32 --batch=100 \
      --variants=core --only=l2r_exact,l2r_exact_general,l2r_reverse --repeats=20
                      # L2R at ε = 0 without / with the Virtual-Train backward
  python -m experiments.benchmarks.benchmark_iteration --model=preact_resnet18 --batch=64
  python -m experiments.benchmarks.benchmark_iteration --model=wrn28_10 --batch=100   # GPU
  python -m experiments.benchmarks.benchmark_iteration --model=resnet32 --batch=100 \
      --variants=dispatch --selection=top,bottom,random      # FaMUS scope programs
                      # (host and ahead dispatch) and FaMUS's own gates over all layers

Writes experiments/results/iteration_<host-kind>.json.
"""

import argparse
import dataclasses
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from famus_jax import famus, models
from experiments import common
from experiments.benchmarks import dispatch_rows


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the table: a meta method, a meta-gradient path and a sampler."""
  name: str
  method: Optional[str]          # None: plain CE step
  mode: str = 'jvp'
  lookahead: str = 'sgd'
  meta: tuple = ()               # overrides of the sampler config (key, value)
  model_kwargs: tuple = ()       # meta model fields (key, value)


# The rows' config.meta over base_config()'s: one scope, one program (gates as data).
META = dict(prune_levels=1, dispatch='none')


def famus_variants(top: str = 'top:8', levels: int = 4) -> list[Variant]:
  """Rows of the paper's Table 3/4 time columns, plus our static/dynamic pruning."""
  def famus(name, **meta):
    return Variant(name, 'mwnet', meta=tuple(dict(sampler='famus', **meta).items()))
  return core_variants() + [
      famus('famus_k4_Lc', lambda1=0.0, lambda2=0.0),
      famus('famus_k4_Lc+Lg', lambda1=0.0, lambda2=0.1),
      famus('famus_k4_Lc+Lr', lambda1=0.1, lambda2=0.0),
      famus('famus_k4_all', lambda1=0.1, lambda2=0.1),
      famus(f'famus_k4_all_levels{levels}', lambda1=0.1, lambda2=0.1, prune_levels=levels,
            dispatch='switch'),
      famus(f'famus_k4_all_{top.replace(":", "")}', lambda1=0.1, lambda2=0.1,
            candidate_layers=top),
      famus(f'famus_k4_all_{top.replace(":", "")}_levels2', lambda1=0.1, lambda2=0.1,
            candidate_layers=top, prune_levels=2, dispatch='switch'),
      Variant('random_s4', 'mwnet', meta=(('sampler', 'random'), ('s', 4))),
      Variant('random_s8', 'mwnet', meta=(('sampler', 'random'), ('s', 8))),
      Variant('random_s16', 'mwnet', meta=(('sampler', 'random'), ('s', 16))),
      Variant('block_first', 'mwnet', meta=(('sampler', 'block'), ('b', 'first'))),
      Variant('block_middle', 'mwnet', meta=(('sampler', 'block'), ('b', 'middle'))),
      Variant('block_last', 'mwnet', meta=(('sampler', 'block'), ('b', 'last'))),
  ]


def core_variants() -> list[Variant]:
  return [
      Variant('plain', None),
      Variant('mwnet_reverse', 'mwnet', 'reverse'),
      Variant('mwnet_jvp', 'mwnet', 'jvp'),
      Variant('l2r_exact', 'l2r', 'jvp'),  # ε = 0: no Virtual-Train backward
      Variant('l2r_exact_general', 'l2r', 'jvp', model_kwargs=(('zero_lookahead', False),)),
      Variant('l2r_reverse', 'l2r', 'reverse'),
      Variant('mlc_reverse', 'mlc', 'reverse'),  # the official MLC step (T = I, fixed inner lr)
      Variant('mlc_jvp', 'mlc', 'jvp'),
      Variant('mlc_famus_k4', 'mlc', meta=(('sampler', 'famus'), ('lambda1', 0.1),
                                           ('lambda2', 0.1))),
      Variant('mlc_transition_jvp', 'mlc_transition', 'jvp'),  # our learned-T extension
  ]


QUICK_VARIANTS = ('mwnet_reverse', 'mwnet_jvp', 'l2r_exact', 'l2r_exact_general',
                  'famus_k4_all', 'famus_k4_all_top8', 'random_s4', 'block_last')
VARIANT_SETS = {'core': core_variants, 'famus': famus_variants,
                'dispatch': None}  # experiments/benchmarks/dispatch_rows.py


def one_program(parts):
  """The jitted meta step of a one-program dispatcher ('none': gates as
  data; 'switch': lax.switch between the scopes), the state donated."""
  programs = parts.dispatcher().programs
  if set(programs) != {'meta'}:
    raise ValueError(f'expected one program, the dispatcher has {sorted(programs)}')
  return programs['meta']


def build(args, variant: Variant, model, images):
  """(the builder's parts, state) for a variant; (None, None) when its sampler
  draws more layers than the model has."""
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:1],
                                              train=False))['params']
  overrides = dict(variant.meta)
  if overrides.get('sampler') == 'block':
    num = models.num_blocks(params)
    overrides['b'] = {'first': 1, 'middle': (num + 1) // 2, 'last': num}[overrides['b']]
  layers = famus.network_layers(model, params, images)
  if overrides.get('sampler') == 'random' and overrides['s'] > len(layers):
    return None, None
  parts = common.step_parts(model, images, args.num_classes, **META, **overrides,
                            method=variant.method or 'mwnet', mode=variant.mode,
                            lookahead=variant.lookahead,
                            model_kwargs=dict(variant.model_kwargs))
  state = fj.create_train_state(jax.random.PRNGKey(0), model, images[:2],
                                args.num_classes, parts.setup)
  return parts, state


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='preact_resnet18')
  parser.add_argument('--width', type=int, default=None, help='model width override')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--num-classes', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--variants', default='famus', choices=sorted(VARIANT_SETS))
  parser.add_argument('--only', default=None, help='comma-separated variant names')
  parser.add_argument('--quick', action='store_true',
                      help='small CNN (PreActResNet-18 at width 8, 16x16, batch 32) and '
                      'only the rows ' + ', '.join(QUICK_VARIANTS))
  parser.add_argument('--out', default=None, help='result JSON file name')
  parser.add_argument('--selection', default=None,
                      help='dispatch rows: forced selections of K layers, comma-separated '
                      'from top,bottom,random (default: all three)')
  parser.add_argument('--levels', type=int, default=0,
                      help='dispatch rows: meta.prune_levels (0: the shipped scopes at '
                      'block boundaries by work)')
  parser.add_argument('--warm', type=int, default=150,
                      help='dispatch rows: iterations of the learned-gates rows before '
                      'timing (the gates learn)')
  parser.add_argument('--learned-per-round', type=int, default=5,
                      help='dispatch rows: consecutive learned-gates iterations timed per '
                      'round (their mean per iteration is the round\'s time)')
  parser.add_argument('--with-switch', action='store_true',
                      help='dispatch rows: also the one-program lax.switch step (slow on CPU)')
  args = parser.parse_args(argv)
  if args.quick:
    args.width, args.image_size, args.batch, args.repeats = 8, 16, 32, 3

  kwargs = {} if args.width is None else {'width': args.width}
  model = models.get_model(args.model, num_classes=args.num_classes, **kwargs)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, 3)
  train = {'image': jnp.asarray(rng.uniform(size=shape), jnp.float32),
           'label': jnp.asarray(rng.integers(0, args.num_classes, args.batch), jnp.int32)}
  val = {'image': jnp.asarray(rng.uniform(size=shape), jnp.float32),
         'label': jnp.asarray(rng.integers(0, args.num_classes, args.batch), jnp.int32)}

  if args.variants == 'dispatch':
    payload = {'model': args.model, 'width': args.width, 'batch': args.batch,
               'image_size': args.image_size, 'num_classes': args.num_classes,
               'machine': common.machine(), **dispatch_rows.run(args, model, train, val)}
    name = args.out or f'iteration_dispatch_{common.host_kind()}.json'
    print('wrote', common.write_json(name, payload))
    return payload
  variants = VARIANT_SETS[args.variants]()
  if args.quick and not args.only:
    args.only = ','.join(QUICK_VARIANTS)
  if args.only:
    keep = set(args.only.split(',')) | {'plain'}
    variants = [v for v in variants if v.name in keep]
  rows = {}
  for variant in variants:
    parts, state = build(args, variant, model, train['image'])
    if parts is None:
      print(f'  {variant.name:<24s} skipped (more layers than the model has)', file=sys.stderr)
      continue
    if variant.method is None:
      step = fj.jit_plain_train_step(parts.setup)
      step_args = (train,)
    else:
      step = one_program(parts)
      step_args = (train, val)
    flops = common.compiled_flops(step, state, *step_args)
    ms, _ = common.time_call(step, state, *step_args, repeats=args.repeats)
    rows[variant.name] = {'ms': ms, 'flops': flops}
    print(f'  {variant.name:<24s} {ms:10.1f} ms', file=sys.stderr, flush=True)

  plain = rows['plain']
  for row in rows.values():
    row['ratio'] = row['ms'] / plain['ms']
    row['flops_ratio'] = row['flops'] / plain['flops']
  print(f'\nmodel={args.model} width={args.width} batch={args.batch} '
        f'image={args.image_size} device={jax.devices()[0].device_kind}')
  print(f'{"variant":<26s}{"ms":>10s}{"× plain":>10s}{"FLOPs × plain":>15s}')
  for name, row in rows.items():
    print(f'{name:<26s}{row["ms"]:10.1f}{row["ratio"]:10.2f}{row["flops_ratio"]:15.2f}')
  payload = {'model': args.model, 'width': args.width, 'batch': args.batch,
             'image_size': args.image_size, 'num_classes': args.num_classes,
             'quick': args.quick, 'repeats': args.repeats, 'machine': common.machine(),
             'variants': rows}
  name = args.out or f'iteration_{common.host_kind()}{"_quick" if args.quick else ""}.json'
  print('wrote', common.write_json(name, payload))
  return payload


if __name__ == '__main__':
  main()
