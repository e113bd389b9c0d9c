"""Iteration time of FaMUS with run-time scope choice (`benchmark_iteration
--variants=dispatch`): plain and exact steps, the one-program rows (gates as
data, random layers, a static top-8 scope, the last block), each scope
program of host dispatch and of gates drawn one meta iteration ahead
(`meta_ahead<j>`), whole host- and ahead-dispatched iterations for forced
selections (`--selection=top,bottom,random`), and consecutive iterations of
FaMUS's own gates over the top-8 candidate layers (ahead), timed in interleaved rounds in
one process (median per row), each compiled program's memory beside it.

Every program is compiled once ahead of time (`jit(...).lower(...).compile()`)
and called on the same input state (no donation), so a row's time is one
iteration's compute.
"""

import dataclasses
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import famus_jax as fj
from famus_jax import famus, models
from famus_jax.training import sharding as sharding_lib
from famus_jax.training import strategies

SAMPLER = dict(sampler='all', k=4, s=4, b=1, tau=5.0, lambda1=0.1, lambda2=0.1,
               delta=0.1, candidate_layers='all', granularity='module',
               prune_levels=1, dispatch='none', gate_grad='scope', rate_cost='count')
SELECTIONS = ('top', 'bottom', 'random')


@dataclasses.dataclass
class Row:
  name: str
  run: Callable[[], object]       # one iteration, returns something to block on
  programs: dict                  # program name -> compiled


def compile_program(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  info = {'flops': float(cost.get('flops', float('nan'))),
          'temp_bytes': int(getattr(mem, 'temp_size_in_bytes', -1)),
          'argument_bytes': int(getattr(mem, 'argument_size_in_bytes', -1)),
          'output_bytes': int(getattr(mem, 'output_size_in_bytes', -1))}
  return compiled, info


class Bench:
  """Model, batches and the builders of setups and states for the rows."""

  def __init__(self, model, train, val, num_classes):
    self.model, self.train, self.val, self.num_classes = model, train, val, num_classes
    self.params = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), train['image'][:1], train=False))['params']
    self.info = {}

  def setup(self, **meta):
    meta = ml_collections.ConfigDict({**SAMPLER, **meta})
    if meta.sampler == 'block':
      meta.b = models.num_blocks(self.params)
    images = self.train['image'][:1]
    setup = fj.StepSetup(
        apply_fn=self.model.apply, meta_model=fj.get_meta_model('mwnet'),
        tx=fj.sgd_with_weight_decay(0.05), meta_tx=fj.make_meta_optimizer('adam', 1e-3, 1e-4),
        lr_schedule=optax.constant_schedule(0.05))
    return dataclasses.replace(
        setup, scope=famus.static_scope(meta, self.model, self.params, images),
        sampler=famus.build_sampler(meta, self.model, self.params, images))

  def state(self, setup):
    return fj.create_train_state(jax.random.PRNGKey(0), self.model, self.train['image'][:2],
                                 self.num_classes, setup)

  def program(self, name, fn, *args):
    print(f'  compiling {name}', file=sys.stderr, flush=True)
    compiled, info = compile_program(fn, *args)
    self.info[name] = info
    return compiled


def single_rows(b: Bench) -> list[Row]:
  """Plain, exact and the one-program rows (gates as data, random, static top-8, last block)."""
  rows = []
  plain_setup = b.setup()
  state = b.state(plain_setup)
  plain = b.program('plain', lambda s, t: fj.plain_train_step(s, t, setup=plain_setup),
                    state, b.train)
  rows.append(Row('plain', lambda: plain(state, b.train), {'plain': plain}))
  for name, meta in (('exact', {}),
                     ('famus_k4_gates_as_data', dict(sampler='famus')),
                     ('random_s4_gates_as_data', dict(sampler='random')),
                     ('famus_k4_static_top8', dict(sampler='famus', candidate_layers='top:8')),
                     ('block_last', dict(sampler='block'))):
    setup = b.setup(**meta)
    st = b.state(setup)
    prog = b.program(name, lambda s, t, v, setup=setup: fj.meta_train_step(s, t, v, setup=setup),
                     st, b.train, b.val)
    rows.append(Row(name, lambda prog=prog, st=st: prog(st, b.train, b.val), {name: prog}))
  return rows


def forced_state(sampler, state, selected):
  """`state` whose FaMUS sampler selects exactly the layers `selected` (the
  last Dense bias of every Γ set to ±30 logits)."""
  bias = np.tile(np.asarray([30.0, -30.0], np.float32), (sampler.num_layers, 1))
  bias[list(selected)] = (-30.0, 30.0)
  eta = jax.tree_util.tree_map(lambda x: x, state.sampler_params)
  eta['Dense_2']['bias'] = jnp.asarray(bias)
  return state.replace(sampler_params=eta)


def host_rows(b: Bench, levels: int, selections, seed: int = 0) -> list[Row]:
  """meta_begin, each scope program alone, and whole host-dispatched
  iterations for forced selections of K layers."""
  setup = b.setup(sampler='famus', prune_levels=levels, dispatch='host')
  sampler = setup.sampler
  state = b.state(setup)
  begin = b.program('host_begin', lambda s, t: fj.meta_begin(s, t, setup=setup),
                    state, b.train)
  carry = begin(state, b.train)
  finish = [b.program(f'host_scope{j}', lambda s, c, t, v, j=j: fj.meta_finish(
      s, c, t, v, setup=setup, level=j), state, carry, b.train, b.val)
            for j in range(len(sampler.levels))]
  all_setup = b.setup(sampler='famus', prune_levels=levels, dispatch='host', gate_grad='all')
  finish_all0 = b.program('host_scope0_gate_grad_all', lambda s, c, t, v: fj.meta_finish(
      s, c, t, v, setup=all_setup, level=0), state, carry, b.train, b.val)
  rows = [Row('host_begin', lambda: begin(state, b.train), {})]
  for j, prog in enumerate(finish):
    rows.append(Row(f'host_scope{j}_only', lambda prog=prog: prog(state, carry, b.train, b.val),
                    {}))
  rows.append(Row('host_scope0_gate_grad_all_only',
                  lambda: finish_all0(state, carry, b.train, b.val), {}))
  patterns = selection_patterns(sampler, seed)
  counts = {}

  def iteration(name):
    st = forced_state(sampler, state, patterns[name]())
    c = begin(st, b.train)
    level = int(jax.device_get(c.selection.level))
    counts.setdefault(name, {}).setdefault(level, 0)
    counts[name][level] += 1
    return finish[level](st, c, b.train, b.val)

  for name in selections:
    rows.append(Row(f'host_selection_{name}', lambda name=name: iteration(name), {}))
  b.info['selection_levels'] = counts
  b.info['level_sizes'] = [len(s) for s in sampler.levels]
  b.info['layer_level'] = list(sampler.layer_level)
  return rows


def selection_patterns(sampler, seed: int) -> dict:
  """Forced selections of K layers: name -> () -> selected layer indices."""
  rng = np.random.default_rng(seed)
  num, k = sampler.num_layers, sampler.k
  return {'top': lambda: range(num - k, num), 'bottom': lambda: range(k),
          'random': lambda: rng.choice(num, k, replace=False)}


def pending_state(sampler, state, selected):
  """`state` whose pending draw (`meta.dispatch='ahead'`) selects exactly the
  layers `selected` (level: the smallest scope holding them; valid)."""
  gates = jnp.zeros((sampler.num_layers,), jnp.float32).at[np.asarray(list(selected))].set(1.0)
  return state.replace(sampler_state=dict(state.sampler_state, gates=gates,
                                          level=sampler.level(gates),
                                          valid=jnp.asarray(True)))


def ahead_rows(b: Bench, levels: int, selections, seed: int = 0) -> list[Row]:
  """Each `meta_ahead<j>` program alone (its pending draw: the lowest layer of
  scope j) and whole iterations through the ahead dispatcher for forced
  pending selections of K layers (its programs compiled ahead, not donating,
  so every call starts from the same state)."""
  setup = b.setup(sampler='famus', prune_levels=levels, dispatch='ahead')
  sampler = setup.sampler
  state = b.state(setup)
  lowest = [int(np.flatnonzero(np.asarray(sampler.layer_level) == j)[0])
            for j in range(len(sampler.levels))]
  scope_states = [pending_state(sampler, state, [i]) for i in lowest]
  compiled = {f'meta_ahead{j}': b.program(f'ahead_scope{j}', lambda s, t, v, j=j: fj.meta_ahead(
      s, t, v, setup=setup, level=j), scope_states[j], b.train, b.val)
              for j in range(len(sampler.levels))}
  rows = [Row(f'ahead_scope{j}_only', lambda prog=prog, st=scope_states[j]: prog(
      st, b.train, b.val), {}) for j, prog in enumerate(compiled.values())]
  patterns = selection_patterns(sampler, seed)
  dispatchers = {}
  for name in selections:
    dispatch = strategies.AheadDispatch(setup, sharding_lib.make_mesh(1))
    dispatch.programs = compiled
    dispatchers[name] = dispatch
    rows.append(Row(f'ahead_selection_{name}', lambda name=name, d=dispatch: d(
        pending_state(sampler, state, patterns[name]()), b.train, b.val), {}))
  b.info['ahead_selection_programs'] = {n: d.counts for n, d in dispatchers.items()}
  return rows


def learned_rows(b: Bench, top: str = 'top:8', levels: int = 2) -> list[Row]:
  """FaMUS as a speed config runs it: K = 4, λ1 = λ2 = 0.1, candidate layers
  `top`, `levels` nested scopes, gates drawn ahead by the sampler itself
  (not forced): consecutive iterations from the state the previous one left,
  through the ahead dispatcher (its programs compiled ahead, not donating).
  Every selection lies in the `top` scope, so no learned pattern costs more."""
  setup = b.setup(sampler='famus', candidate_layers=top, prune_levels=levels,
                  dispatch='ahead')
  sampler = setup.sampler
  state = b.state(setup)
  lowest = [int(np.flatnonzero(np.asarray(sampler.layer_level) == j)[0])
            for j in range(len(sampler.levels))]
  tag = top.replace(':', '')
  dispatch = strategies.AheadDispatch(setup, sharding_lib.make_mesh(1))
  dispatch.programs = {f'meta_ahead{j}': b.program(
      f'learned_{tag}_scope{j}', lambda s, t, v, j=j: fj.meta_ahead(s, t, v, setup=setup, level=j),
      pending_state(sampler, state, [i]), b.train, b.val) for j, i in enumerate(lowest)}
  carry = {'state': state}

  def iteration():
    carry['state'], metrics = dispatch(carry['state'], b.train, b.val)
    return metrics

  b.info['learned_programs'] = dispatch.counts
  return [Row(f'ahead_learned_{tag}', iteration, {})]


def switch_rows(b: Bench, levels: int) -> list[Row]:
  setup = b.setup(sampler='famus', prune_levels=levels, dispatch='switch')
  state = forced_state(setup.sampler, b.state(setup), range(setup.sampler.num_layers - 4,
                                                            setup.sampler.num_layers))
  prog = b.program('famus_switch', lambda s, t, v: fj.meta_train_step(s, t, v, setup=setup),
                   state, b.train, b.val)
  return [Row('famus_switch_top4', lambda: prog(state, b.train, b.val), {})]


def time_rows(rows, rounds: int, warmup: int = 1) -> dict:
  """Median ms of each row over `rounds` interleaved rounds."""
  for row in rows:
    for _ in range(warmup):
      jax.block_until_ready(row.run())
  times = {row.name: [] for row in rows}
  for r in range(rounds):
    for row in rows:
      start = time.perf_counter()
      jax.block_until_ready(row.run())
      times[row.name].append((time.perf_counter() - start) * 1e3)
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


def run(args, model, train, val) -> dict:
  """The dispatch table: rows, times, ratios, compiled memory."""
  b = Bench(model, train, val, args.num_classes)
  selections = [s for s in (args.selection or ','.join(SELECTIONS)).split(',') if s]
  unknown = set(selections) - set(SELECTIONS)
  if unknown:
    raise SystemExit(f'--selection: unknown {sorted(unknown)}; use {",".join(SELECTIONS)}')
  rows = (single_rows(b) + host_rows(b, args.levels, selections)
          + ahead_rows(b, args.levels, selections) + learned_rows(b))
  if args.with_switch:
    rows += switch_rows(b, args.levels)
  load_before = os.getloadavg()
  table = time_rows(rows, args.repeats)
  add_ratios(table)
  programs = {k: v for k, v in b.info.items() if isinstance(v, dict) and 'flops' in v}
  print(f'\n{"row":<34s}{"ms":>9s}{"× plain":>9s}{"× exact":>9s}  (median of per-round ratios)')
  for name, row in table.items():
    print(f'{name:<34s}{row["ms"]:9.0f}{row["x_plain_round_median"]:9.2f}'
          f'{row["x_exact_round_median"]:9.2f}')
  print(f'\n{"program":<28s}{"GFLOP":>8s}{"temp MB":>9s}{"arg MB":>8s}')
  for name, info in programs.items():
    print(f'{name:<28s}{info["flops"] / 1e9:8.1f}{info["temp_bytes"] / 2**20:9.1f}'
          f'{info["argument_bytes"] / 2**20:8.1f}')
  return {'rows': table, 'programs': programs, 'levels': args.levels,
          'selection_levels': b.info['selection_levels'],
          'ahead_selection_programs': {n: dict(sorted(c.items())) for n, c in
                                       b.info['ahead_selection_programs'].items()},
          'learned_programs': dict(sorted(b.info['learned_programs'].items())),
          'level_sizes': b.info['level_sizes'], 'layer_level': b.info['layer_level'],
          'rounds': args.repeats, 'load_average_before': load_before,
          'load_average_after': os.getloadavg()}
