"""Iteration time of FaMUS with run-time scopes (`benchmark_iteration
--variants=dispatch`), in one process, rows interleaved in rounds (median):

- plain and exact steps; one-program rows: FaMUS and random gates as data, a
  static top-8 candidate scope, the last block (static);
- for the dispatchers 'host' (Algorithm 1's gates; `meta_begin` then
  `meta_scope<j>`) and 'ahead' (gates drawn one meta iteration ahead;
  `meta_ahead<j>`): each program alone on a selection of scope j's lowest
  layer, whole iterations for forced selections of K layers
  (`--selection=top,bottom,random`) and **FaMUS's own gates over every layer
  with the shipped configs' settings** (K = 4, λ1 = λ2 = 0.1, the scope price
  on L_r, scopes at block boundaries by work): `<dispatcher>_learned_all`,
  consecutive iterations from the state the previous one left, after `--warm`
  iterations so that the gates have learned; each round times
  `--learned-per-round` of them and counts their mean.

The scopes are the shipped ones (`--levels=0`) unless `--levels=P`. Every
program is compiled ahead of time through the dispatcher's own API
(`Dispatcher.compile`) without donation, so a row can run on one state again
and again; a row's time is the median over the rounds of one iteration's
compute, a learned row's of the mean over the consecutive iterations of a
round (the scopes its gates chose in them).
"""

import collections
import dataclasses
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import famus_jax as fj
from experiments import common
from famus_jax import famus, models

# The rows' config.meta over base_config()'s (each row sets its sampler and dispatch).
META = dict(lambda1=0.1, lambda2=0.1, dispatch='none', rate_cost='scope')
SELECTIONS = ('top', 'bottom', 'random')
DISPATCHERS = ('host', 'ahead')


@dataclasses.dataclass
class Row:
  name: str
  run: Callable[[], object]       # `iterations` iterations, returns something to block on
  iterations: int = 1


def program_info(compiled) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'flops': float(cost.get('flops', float('nan'))),
          'temp_bytes': int(getattr(mem, 'temp_size_in_bytes', -1)),
          'argument_bytes': int(getattr(mem, 'argument_size_in_bytes', -1)),
          'output_bytes': int(getattr(mem, 'output_size_in_bytes', -1))}


class Bench:
  """Model, batches, setups and states of the rows; what each program compiled to."""

  def __init__(self, model, train, val, num_classes, levels: int):
    self.model, self.train, self.val, self.num_classes = model, train, val, num_classes
    self.levels = levels
    self.params = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), train['image'][:1], train=False))['params']
    self.info, self.compile_s = {}, {}

  def parts(self, **meta):
    """The builder's parts of a row: `META`, the bench's scope levels and `meta`."""
    meta = {**META, 'prune_levels': self.levels, **meta}
    if meta.get('sampler') == 'block':
      meta['b'] = models.num_blocks(self.params)
    return common.step_parts(self.model, self.train['image'], self.num_classes, **meta)

  def state(self, parts):
    return fj.create_train_state(jax.random.PRNGKey(0), self.model, self.train['image'][:2],
                                 self.num_classes, parts.setup)

  def dispatcher(self, label: str, parts, state):
    """The parts' dispatcher with every program compiled ahead of time
    ('meta_scope<j>' on `meta_begin`'s output for `state`)."""
    d = parts.dispatcher(famus.Compiler(donate=False))
    begin = None
    for name in d.program_names():
      args = ((state, self.train) if name == 'meta_begin' else
              (state, begin, self.train, self.val) if name.startswith('meta_scope') else
              (state, self.train, self.val))
      print(f'  compiling {label}/{name}', file=sys.stderr, flush=True)
      start = time.perf_counter()
      compiled = d.compile(name, *args)
      self.compile_s[f'{label}/{name}'] = time.perf_counter() - start
      self.info[f'{label}/{name}'] = program_info(compiled)
      if name == 'meta_begin':
        begin = compiled(state, self.train)
    return d


def single_rows(b: Bench) -> list[Row]:
  """Plain, exact and the one-program rows (gates as data, random, static top-8, last block)."""
  base = b.parts()
  plain_setup = base.setup
  state = b.state(base)
  print('  compiling plain', file=sys.stderr, flush=True)
  plain = jax.jit(lambda s, t: fj.plain_train_step(s, t, setup=plain_setup)).lower(
      state, b.train).compile()
  b.info['plain'] = program_info(plain)
  rows = [Row('plain', lambda: plain(state, b.train))]
  for name, meta in (('exact', {}),
                     ('famus_k4_gates_as_data', dict(sampler='famus', prune_levels=1)),
                     ('random_s4_gates_as_data', dict(sampler='random', prune_levels=1)),
                     ('famus_k4_static_top8', dict(sampler='famus', candidate_layers='top:8',
                                                   prune_levels=1)),
                     ('block_last', dict(sampler='block'))):
    parts = b.parts(**meta)
    st = b.state(parts)
    d = b.dispatcher(name, parts, st)
    rows.append(Row(name, lambda d=d, st=st: d(st, b.train, b.val)))
  return rows


def forced_state(sampler, state, selected):
  """`state` whose FaMUS sampler selects exactly the layers `selected` now (the
  last Dense bias of every Γ set to ±30 logits) and, for 'ahead', whose
  pending draw holds them."""
  bias = np.tile(np.asarray([30.0, -30.0], np.float32), (sampler.num_layers, 1))
  bias[list(selected)] = (-30.0, 30.0)
  eta = jax.tree_util.tree_map(lambda x: x, state.sampler_params)
  eta['Dense_2']['bias'] = jnp.asarray(bias)
  state = state.replace(sampler_params=eta)
  if not state.sampler_state:
    return state
  gates = jnp.zeros((sampler.num_layers,), jnp.float32).at[np.asarray(list(selected))].set(1.0)
  return state.replace(sampler_state=dict(state.sampler_state, gates=gates,
                                          level=sampler.scopes.level(gates),
                                          valid=jnp.asarray(True)))


def selection_patterns(sampler, seed: int) -> dict:
  """Forced selections of K layers: name -> () -> selected layer indices."""
  rng = np.random.default_rng(seed)
  num, k = sampler.num_layers, sampler.k
  return {'top': lambda: range(num - k, num), 'bottom': lambda: range(k),
          'random': lambda: rng.choice(num, k, replace=False)}


class Counted:
  """Runs iterations of a dispatcher on fixed batches and counts the programs
  they ran."""

  def __init__(self, d, train, val):
    self.d, self.train, self.val, self.counts = d, train, val, collections.Counter()

  def __call__(self, state):
    before = dict(self.d.counts)
    out = self.d(state, self.train, self.val)
    self.counts.update({k: v - before.get(k, 0) for k, v in self.d.counts.items()
                        if v != before.get(k, 0)})
    return out


def dispatcher_rows(b: Bench, name: str, selections, warm: int, learned_per_round: int,
                    seed: int = 0) -> list[Row]:
  """One dispatcher: each program alone, forced selections, learned gates
  (`learned_per_round` consecutive iterations per timed round)."""
  parts = b.parts(sampler='famus', dispatch=name)
  sampler = parts.sampler
  state = b.state(parts)
  d = b.dispatcher(name, parts, state)
  lowest = [int(np.flatnonzero(np.asarray(sampler.scopes.layer_level) == j)[0])
            for j in range(len(sampler.scopes))]
  rows = []
  if name == 'host':
    rows.append(Row('host_begin', lambda: d.programs['meta_begin'](state, b.train)))
  for j, i in enumerate(lowest):
    st = forced_state(sampler, state, [i])
    if name == 'host':
      begin = d.programs['meta_begin'](st, b.train)
      rows.append(Row(f'host_scope{j}_only', lambda st=st, begin=begin, j=j: d.programs[
          f'meta_scope{j}'](st, begin, b.train, b.val)))
    else:
      rows.append(Row(f'ahead_scope{j}_only', lambda st=st, j=j: d.programs[
          f'meta_ahead{j}'](st, b.train, b.val)))
  patterns = selection_patterns(sampler, seed)
  runs = {}
  for sel in selections:
    runs[sel] = Counted(d, b.train, b.val)
    rows.append(Row(f'{name}_selection_{sel}', lambda sel=sel: runs[sel](
        forced_state(sampler, state, patterns[sel]()))))
  learned = Counted(d, b.train, b.val)
  carry = {'state': state}

  def iteration():
    carry['state'], metrics = learned(carry['state'])
    return metrics

  def iterations():
    for _ in range(learned_per_round - 1):
      jax.block_until_ready(iteration())
    return iteration()

  warm_counts = collections.Counter()
  start = time.perf_counter()
  for _ in range(warm):
    jax.block_until_ready(iteration())
  warm_counts.update(learned.counts)
  learned.counts.clear()
  print(f'  {name}: {warm} warm learned iterations in {time.perf_counter() - start:.0f} s, '
        f'programs {dict(sorted(warm_counts.items()))}', file=sys.stderr, flush=True)
  rows.append(Row(f'{name}_learned_all', iterations, learned_per_round))
  b.info[f'{name}_programs'] = {'selections': {k: c.counts for k, c in runs.items()},
                                'learned_warm': warm_counts, 'learned': learned.counts}
  b.info['level_sizes'] = [len(s) for s in sampler.scopes.scopes]
  b.info['layer_level'] = list(sampler.scopes.layer_level)
  return rows


def switch_rows(b: Bench) -> list[Row]:
  parts = b.parts(sampler='famus', dispatch='switch')
  sampler = parts.sampler
  state = forced_state(sampler, b.state(parts), range(sampler.num_layers - 4,
                                                      sampler.num_layers))
  d = b.dispatcher('switch', parts, state)
  return [Row('famus_switch_top4', lambda: d(state, b.train, b.val))]


def time_rows(rows, rounds: int, warmup: int = 1) -> dict:
  """Median ms per iteration of each row over `rounds` interleaved rounds."""
  for row in rows:
    for _ in range(warmup):
      jax.block_until_ready(row.run())
  times = {row.name: [] for row in rows}
  for r in range(rounds):
    for row in rows:
      start = time.perf_counter()
      jax.block_until_ready(row.run())
      times[row.name].append((time.perf_counter() - start) * 1e3 / row.iterations)
    print(f'  round {r + 1}/{rounds}: ' + ', '.join(
        f'{k} {v[-1]:.0f}' for k, v in times.items()), file=sys.stderr, flush=True)
  return {k: {'ms': statistics.median(v), 'all_ms': v} for k, v in times.items()}


def add_ratios(table: dict) -> None:
  """Ratios to the plain and exact rows: of the medians, and the median of the
  per-round ratios (robust to load that changes between rounds)."""
  plain, exact = table['plain'], table['exact']
  for row in table.values():
    row.update(x_plain=row['ms'] / plain['ms'], x_exact=row['ms'] / exact['ms'])
    for key, ref in (('x_plain_round_median', plain), ('x_exact_round_median', exact)):
      row[key] = statistics.median(a / b for a, b in zip(row['all_ms'], ref['all_ms']))


def _counts(obj):
  """Counters -> sorted plain dicts, recursively (for the JSON)."""
  if isinstance(obj, dict):
    return {k: _counts(v) for k, v in sorted(obj.items())}
  return obj


def run(args, model, train, val) -> dict:
  """The dispatch table: rows, times, ratios, compiled FLOPs and memory."""
  b = Bench(model, train, val, args.num_classes, args.levels)
  selections = [s for s in (args.selection or ','.join(SELECTIONS)).split(',') if s]
  unknown = set(selections) - set(SELECTIONS)
  if unknown:
    raise SystemExit(f'--selection: unknown {sorted(unknown)}; use {",".join(SELECTIONS)}')
  rows = single_rows(b)
  for name in DISPATCHERS:
    rows += dispatcher_rows(b, name, selections, args.warm, args.learned_per_round)
  if args.with_switch:
    rows += switch_rows(b)
  load_before = os.getloadavg()
  table = time_rows(rows, args.repeats)
  add_ratios(table)
  programs = {k: v for k, v in b.info.items() if isinstance(v, dict) and 'flops' in v}
  print(f'\n{"row":<34s}{"ms":>9s}{"× plain":>9s}{"× exact":>9s}  (median of per-round ratios)')
  for name, row in table.items():
    print(f'{name:<34s}{row["ms"]:9.0f}{row["x_plain_round_median"]:9.2f}'
          f'{row["x_exact_round_median"]:9.2f}')
  print(f'\n{"program":<34s}{"GFLOP":>8s}{"temp MB":>9s}{"compile s":>10s}')
  for name, info in programs.items():
    print(f'{name:<34s}{info["flops"] / 1e9:8.1f}{info["temp_bytes"] / 2**20:9.1f}'
          f'{b.compile_s.get(name, float("nan")):10.1f}')
  return {'rows': table, 'programs': programs, 'compile_s': b.compile_s,
          'levels': args.levels, 'warm_learned_iterations': args.warm,
          'learned_iterations_per_round': args.learned_per_round,
          'dispatch_programs': {n: _counts(b.info[f'{n}_programs']) for n in DISPATCHERS},
          'level_sizes': b.info['level_sizes'], 'layer_level': b.info['layer_level'],
          'rounds': args.repeats, 'load_average_before': load_before,
          'load_average_after': os.getloadavg()}
