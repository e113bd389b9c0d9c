"""What run-time scopes cost to compile, per backbone.

For each backbone of the paper's configs, FaMUS as the configs ship it (every
layer a candidate, K = 4, λ1 = λ2 = 0.1, the scope price, scopes at block
boundaries by work): the nested scopes (candidate layers in each, the share of
the forward FLOPs from its boundary up), and every program of the chosen
dispatchers compiled on this machine: seconds and XLA's GFLOP each, at a small
batch (compile time hardly depends on it). A run compiles a scope's program
the first time its gates choose that scope.

  python -m experiments.benchmarks.dispatch_compile                      # all backbones, 'host'
  python -m experiments.benchmarks.dispatch_compile --models=resnet32 --dispatchers=host,ahead

Writes experiments/results/dispatch_compile_<host-kind>.json (rewritten after
every backbone).
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from experiments import common
from famus_jax import famus, models

BACKBONES = {  # model -> (input shape, classes, kwargs): the configs' settings
    'resnet32': ((32, 32, 3), 10, {}),
    'wrn28_10': ((32, 32, 3), 10, {}),
    'wrn40_2': ((32, 32, 3), 10, {}),
    'preact_resnet18': ((32, 32, 3), 10, {}),
    'resnet50': ((224, 224, 3), 14, {}),
    'inception_resnet_v2': ((299, 299, 3), 50, {}),
    'fashion_resnet': ((28, 28, 1), 10, {'width': 8, 'stage_sizes': (1, 1, 1)}),
    'digits_cnn': ((8, 8, 1), 10, {'width': 8, 'depth': 2}),
}
# The shipped FaMUS (config.meta over base_config()'s): every layer, scopes by work.
META = dict(sampler='famus', lambda1=0.1, lambda2=0.1, rate_cost='scope')


def backbone(name: str, batch: int, dispatchers) -> dict:
  shape, classes, kwargs = BACKBONES[name]
  model = models.get_model(name, num_classes=classes, **kwargs)
  rng = np.random.default_rng(0)
  train = {'image': jnp.asarray(rng.uniform(size=(batch, *shape)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, classes, batch), jnp.int32)}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), train['image'][:1],
                                             train=False))['params']
  out = {'input': shape, 'batch': batch, 'programs': {}}
  for dispatch in dispatchers:
    start = time.perf_counter()
    parts = common.step_parts(model, train['image'], classes, **META, dispatch=dispatch)
    sampler = parts.sampler
    out['build_sampler_s'] = time.perf_counter() - start  # the whole build, sampler included
    layers = famus.network_layers(model, params, train['image'][:1])
    work = famus.samplers.scope_work(
        sampler, famus.dispatch.module_block_flops(model, params, train['image'][:1], layers))
    out['scopes'] = [{'layers': sum(1 for lv in sampler.scopes.layer_level if lv <= j),
                      'work_share': w / work[-1]} for j, w in enumerate(work)]
    out['num_layers'] = sampler.num_layers
    state = fj.create_train_state(jax.random.PRNGKey(0), model, train['image'][:1],
                                  classes, parts.setup)
    d = parts.dispatcher(famus.Compiler(donate=False))
    begin = None
    for program in d.program_names():
      args = ((state, train) if program == 'meta_begin' else
              (state, begin, train, train) if program.startswith('meta_scope') else
              (state, train, train))
      start = time.perf_counter()
      compiled = d.compile(program, *args)
      seconds = time.perf_counter() - start
      out['programs'][f'{dispatch}/{program}'] = {
          'compile_s': seconds, 'gflop': float(compiled.cost_analysis()['flops']) / 1e9}
      print(f'  {name} {dispatch}/{program}: {seconds:.1f} s', file=sys.stderr, flush=True)
      if program == 'meta_begin':
        begin = compiled(state, train)
    out[f'{dispatch}_compile_s'] = sum(v['compile_s'] for k, v in out['programs'].items()
                                       if k.startswith(dispatch + '/'))
    out[f'{dispatch}_programs'] = len(d.program_names())
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default=','.join(BACKBONES))
  parser.add_argument('--dispatchers', default='host')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  names, dispatchers = args.models.split(','), args.dispatchers.split(',')
  bad = (set(names) - set(BACKBONES)) | (set(dispatchers) - set(famus.DISPATCHERS))
  if bad:
    parser.error(f'unknown {sorted(bad)}; models: {", ".join(BACKBONES)}; '
                 f'dispatchers: {", ".join(famus.DISPATCHERS)}')
  name = args.out or f'dispatch_compile_{common.host_kind()}.json'
  payload = {'machine': common.machine(), 'dispatchers': dispatchers, 'backbones': {},
             'load_average_before': os.getloadavg()}
  for model in names:
    payload['backbones'][model] = backbone(model, args.batch, dispatchers)
    payload['load_average_after'] = os.getloadavg()
    path = common.write_json(name, payload)
  print(f'{"backbone":<22s}{"layers":>7s}{"scopes":>7s}  {"programs / compile s":<28s}scope layers (work %)')
  for model, r in payload['backbones'].items():
    compiled = ', '.join(f'{d} {r[f"{d}_programs"]} / {r[f"{d}_compile_s"]:.0f}' for d in dispatchers)
    scopes = ', '.join(f'{s["layers"]} ({100 * s["work_share"]:.0f})' for s in r['scopes'])
    print(f'{model:<22s}{r["num_layers"]:7d}{len(r["scopes"]):7d}  {compiled:<28s}{scopes}')
  print('wrote', path)
  return payload


if __name__ == '__main__':
  main()
