"""Which compiled program runs a meta iteration: nested scopes and dispatchers.

A selection of layers costs what its lowest selected layer costs: the
validation backward runs down to it and the tangent pass up from it. Gates
passed as data into one compiled program save nothing (XLA computes every
layer's term), and on XLA:CPU a convolution inside `lax.switch` runs 20-30x
slower than outside, so the meta scope is chosen on the host between
precompiled programs, each static in its scope. This module owns all of it:

- `NestedScopes` (`nested_scopes` builds them): the candidate layers cut at
  the backbone's block boundaries into nested static scopes, smallest first
  (the last blocks and the head), the last holding every candidate.
- `DISPATCHERS`, keyed by `meta.dispatch` (default `DEFAULT`): one class per
  way of running a meta iteration, each with its `description`, the programs
  it compiles (`program_names`) and the host-side choice of program
  (`__call__`).
- Pending draws (`init_pending`, `ahead_step`): under 'ahead', the gates of
  the next meta iteration, kept in `TrainState.sampler_state`.
- The program cache: a dispatcher's `programs` (name -> jitted function,
  compiled on first use, or ahead of time by `Dispatcher.compile`) and
  `counts` (meta iterations per program). `Compiler` says how they are
  jitted (shardings, donation, the harness's wrapper).

Public: `DEFAULT`, `DISPATCHERS`, `NestedScopes`, `nested_scopes`,
`module_block_flops`, `Compiler`, `Dispatcher`, `make_dispatcher`,
`init_pending`.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from famus_jax import core
from famus_jax import models
from famus_jax.famus import layers as layers_lib

PyTree = Any


# ------------------------------------------------------------ nested scopes

@dataclasses.dataclass(frozen=True)
class NestedScopes:
  """Nested static meta scopes of the candidate layers (hashable, jit-static).

  Attributes:
    scopes: frozensets of parameter leaf names, smallest first; the last holds
      every candidate layer.
    layer_level: for each candidate layer (forward order) the index of the
      smallest scope holding it.
  """
  scopes: tuple = ()
  layer_level: tuple = ()

  def __len__(self) -> int:
    return len(self.scopes)

  def level(self, gates: jax.Array) -> Optional[jax.Array]:
    """int32 index of the smallest scope holding every selected layer (None
    with one scope); an empty selection runs the smallest."""
    if len(self.scopes) <= 1:
      return None
    levels = jnp.asarray(self.layer_level, jnp.int32)
    selected = jax.lax.stop_gradient(gates) > 0.5
    return jnp.max(jnp.where(selected, levels, 0))


def module_block_flops(model, params: PyTree, sample_images, layers: Sequence
                       ) -> dict[int, float]:
  """Forward FLOPs of each block (0 stem, 1..B, B+1 head) of `model`: its
  convolutions and dense layers on one example (`models.structure.module_flops`)."""
  block_of = {layer.name.split('/')[0]: layer.block for layer in layers}
  flops = collections.Counter()
  for path, f in models.structure.module_flops(model, params, sample_images[:1]).items():
    flops[block_of.get(path[0], 0)] += f
  return {b: float(flops[b]) for b in sorted(set(block_of.values()))}


def _work_above(block_flops: Mapping[int, float]) -> Callable[[int], float]:
  """b -> FLOPs of the blocks from b to the output: what a scope starting at
  block b costs in the validation backward and the tangent pass."""
  return lambda b: sum(f for k, f in block_flops.items() if k >= b)


HALF = 0.51  # "about half": two equal blocks and the head halve to one block and the head


def _halving_boundaries(blocks, work, counts, min_top_layers: int) -> list[int]:
  """All candidates, then each next smaller scope the largest with at most half
  the previous one's work, while it holds at least `min_top_layers`
  candidates (smallest scope first)."""
  chosen = [blocks[0]]
  while True:
    smaller = [b for b in blocks if b > chosen[-1] and work(b) <= work(chosen[-1]) * HALF
               and counts[b] >= min_top_layers]
    if not smaller:
      return chosen[::-1]
    chosen.append(min(smaller))


def _count_boundaries(candidates, prune_levels: int) -> list[int]:
  """P scopes: the blocks holding the lowest of the top ⌈pL/P⌉ candidate
  layers, p = 1..P (each scope rounded down to its block's start)."""
  n = len(candidates)
  starts = [candidates[n - max(1, math.ceil(p * n / prune_levels))].block
            for p in range(1, prune_levels + 1)]
  return sorted(set(starts), reverse=True)


def nested_scopes(candidates: Sequence, block_flops: Mapping[int, float], *,
                  prune_levels: int = 0, min_top_layers: int = 1) -> NestedScopes:
  """Nested scopes of the candidate layers cut at block boundaries.

  A scope is every candidate layer from a block boundary to the output.
  `prune_levels`: 0 picks the boundaries by their work (the FLOPs from the
  boundary to the output, `block_flops`): all candidates, then each next
  smaller scope the largest with at most half the previous one's work, down
  to the smallest that holds at least `min_top_layers` candidates (FaMUS: K,
  so that L_r can be met inside it) — a selection then runs at most about
  twice the meta work it needs, with about log2(network / last block)
  programs. 1: one scope. P >= 2: the blocks of the lowest of the top
  ⌈pL/P⌉ layers, p = 1..P (fewer when blocks coincide).
  """
  candidates = tuple(candidates)
  if prune_levels == 1 or not candidates:
    return NestedScopes((layers_lib.leaf_names(candidates),), (0,) * len(candidates))
  blocks = sorted({layer.block for layer in candidates})
  counts = {b: sum(layer.block >= b for layer in candidates) for b in blocks}
  if prune_levels == 0:
    starts = _halving_boundaries(blocks, _work_above(block_flops), counts,
                                 min_top_layers)
  else:
    starts = _count_boundaries(candidates, prune_levels)
  scopes = tuple(layers_lib.leaf_names([layer for layer in candidates if layer.block >= b])
                 for b in starts)
  layer_level = tuple(next(j for j, b in enumerate(starts) if layer.block >= b)
                      for layer in candidates)
  return NestedScopes(scopes, layer_level)


# -------------------------------------------------------------- compilation

@dataclasses.dataclass(frozen=True)
class Compiler:
  """How a dispatcher jits its programs.

  Attributes:
    state_sharding: sharding of the train state (None: jax's default).
    batch_sharding: sharding of the training and validation batches.
    donate: whether a step donates its input state (benchmarks that call a
      program repeatedly on one state set False).
    wrap: applied to every step function `(state, *args, setup) -> (state,
      metrics)` before jitting (the training loop adds its finiteness flag).
  """
  state_sharding: Any = None
  batch_sharding: Any = None
  donate: bool = True
  wrap: Optional[Callable] = None

  def _shardings(self, num_batches: int) -> dict:
    if self.state_sharding is None:
      return {}
    return {'in_shardings': (self.state_sharding,) + (self.batch_sharding,) * num_batches}

  def step(self, fn: Callable, setup, num_batches: int = 2, **static) -> Callable:
    """`fn(state, *batches, setup, **static)` jitted: state donated, new state
    and metrics replicated."""
    fn = functools.partial(fn, **static)
    wrapped = self.wrap(fn) if self.wrap is not None else fn
    out = {} if self.state_sharding is None else {
        'out_shardings': (self.state_sharding, self.state_sharding)}
    return jax.jit(functools.partial(wrapped, setup=setup),
                   donate_argnums=(0,) if self.donate else (),
                   **self._shardings(num_batches), **out)

  def begin(self, fn: Callable, setup) -> Callable:
    """`fn(state, batch, setup)` jitted, nothing donated (the state goes on)."""
    return jax.jit(functools.partial(fn, setup=setup), **self._shardings(1))

  def finish(self, fn: Callable, setup, **static) -> Callable:
    """`fn(state, begin, batch, val_batch, setup, **static)` jitted like `step`
    (the begin carry keeps the shardings it was made with)."""
    fn = functools.partial(fn, **static)
    wrapped = self.wrap(fn) if self.wrap is not None else fn
    out = {} if self.state_sharding is None else {
        'out_shardings': (self.state_sharding, self.state_sharding)}
    return jax.jit(functools.partial(wrapped, setup=setup),
                   donate_argnums=(0,) if self.donate else (), **out)


# --------------------------------------------------------------- dispatchers

class Dispatcher(abc.ABC):
  """Runs meta iterations of `setup` through its compiled programs.

  Attributes:
    programs: program name -> jitted function, compiled on first use.
    counts: meta iterations run per program name.
    scopes: the sampler's `NestedScopes`.
  """
  description: ClassVar[str] = ''
  draws_ahead: ClassVar[bool] = False  # keeps a pending draw in the state

  def __init__(self, setup: core.StepSetup, compiler: Optional[Compiler] = None):
    self.setup = setup
    self.compiler = compiler or Compiler()
    sampler = setup.sampler
    self.scopes = sampler.scopes if sampler is not None else NestedScopes()
    self.programs = self.build()
    self.counts = collections.Counter()

  @abc.abstractmethod
  def build(self) -> dict:
    """Program name -> jitted function."""

  def program_names(self) -> tuple[str, ...]:
    return tuple(self.programs)

  def compile(self, name: str, *args):
    """Compiles program `name` for `args` ahead of time, keeps the executable
    for later calls and returns it (`.cost_analysis()`, `.memory_analysis()`)."""
    compiled = self.programs[name].lower(*args).compile()
    self.programs[name] = compiled
    return compiled

  def run(self, name: str, *args):
    self.counts[name] += 1
    return self.programs[name](*args)

  @abc.abstractmethod
  def __call__(self, state, batch: dict, val_batch: dict):
    """One meta iteration: (new state, metrics)."""


class OneProgram(Dispatcher):
  description = ('one program over every candidate layer, the gates as data '
                 '(no saving; the reference the others equal)')

  def build(self) -> dict:
    return {'meta': self.compiler.step(core.meta_train_step, self.setup)}

  def __call__(self, state, batch, val_batch):
    return self.run('meta', state, batch, val_batch)


def switch_step(state, batch: dict, val_batch: dict, *, setup):
  """One program: `meta_begin`, then `lax.switch` on the gates' scope between
  the static-scope `meta_finish` stages."""
  begin = core.meta_begin(state, batch, setup=setup)
  branches = [functools.partial(core.meta_finish, setup=setup, scope=scope,
                                tangent_pass='transpose')
              for scope in setup.sampler.scopes.scopes]
  return jax.lax.switch(begin.selection.level, branches, state, begin, batch, val_batch)


class LaxSwitch(Dispatcher):
  description = ('one program, lax.switch between the scopes (for accelerators; '
                 'on XLA:CPU a convolution inside a switch branch runs 20-30x slower)')

  def build(self) -> dict:
    return {'meta': self.compiler.step(switch_step, self.setup)}

  def __call__(self, state, batch, val_batch):
    return self.run('meta', state, batch, val_batch)


class HostDispatch(Dispatcher):
  description = ("Algorithm 1's gates, from this iteration's Virtual-Train gradient: "
                 "'meta_begin' (training forward, its VJP kept, Virtual-Train, "
                 "gates), the host reads the scope index, then 'meta_scope<j>' "
                 '(Meta-Train on scope j, its tangent pass the transpose of the '
                 'kept VJP, so no forward runs twice; Actual-Train)')

  def build(self) -> dict:
    programs = {'meta_begin': self.compiler.begin(core.meta_begin, self.setup)}
    for j, scope in enumerate(self.scopes.scopes):
      programs[f'meta_scope{j}'] = self.compiler.finish(
          core.meta_finish, self.setup, scope=scope, tangent_pass='transpose')
    return programs

  def choose(self, begin: core.MetaBegin) -> str:
    """The scope program of `begin`'s gates (reads one scalar from the device)."""
    return f'meta_scope{int(jax.device_get(begin.selection.level))}'

  def __call__(self, state, batch, val_batch):
    begin = self.programs['meta_begin'](state, batch)
    return self.run(self.choose(begin), state, begin, batch, val_batch)


class AheadDispatch(Dispatcher):
  description = ('gates drawn one meta iteration ahead: one program per meta '
                 "iteration, 'meta_ahead<j>' on the scope of the gates the "
                 'previous meta iteration drew from its own Virtual-Train gradient '
                 '(kept in the state); departs from Algorithm 1 by one meta iteration')
  draws_ahead = True

  def build(self) -> dict:
    return {f'meta_ahead{j}': self.compiler.step(ahead_step, self.setup, level=j)
            for j in range(len(self.scopes))}

  def choose(self, state) -> str:
    """The program of the stored draw's scope (reads one scalar)."""
    return f'meta_ahead{int(jax.device_get(state.sampler_state["level"]))}'

  def __call__(self, state, batch, val_batch):
    return self.run(self.choose(state), state, batch, val_batch)


# config `meta.dispatch` default: gates drawn one meta iteration ahead (ours),
# 0.86x the wall time of Algorithm 1's gates ('host') in whole Fashion-MNIST
# runs at equal accuracy (experiments/studies/dispatch_study.py).
DEFAULT = 'ahead'
DISPATCHERS: dict[str, type[Dispatcher]] = {  # config `meta.dispatch`
    'host': HostDispatch,
    'ahead': AheadDispatch,
    'switch': LaxSwitch,
    'none': OneProgram,
}


def make_dispatcher(setup: core.StepSetup, compiler: Optional[Compiler] = None
                    ) -> Dispatcher:
  """The dispatcher of the sampler's `dispatch` (one program without a sampler
  or with a single scope)."""
  sampler = setup.sampler
  if sampler is None or len(sampler.scopes) <= 1:
    return OneProgram(setup, compiler)
  return DISPATCHERS[sampler.dispatch](setup, compiler)


# -------------------------------------------------- pending draws ('ahead')

def draws_ahead(sampler) -> bool:
  """Whether `sampler`'s dispatcher keeps the next meta iteration's gates."""
  return DISPATCHERS[sampler.dispatch].draws_ahead and len(sampler.scopes) > 1


def init_pending(sampler) -> dict:
  """The state's `sampler_state` before any draw: {} unless the sampler draws
  ahead; else no valid draw yet, its level the full scope (so the first meta
  iteration draws its gates itself), and the sampler's own fields zero."""
  if not draws_ahead(sampler):
    return {}
  return {'gates': jnp.zeros((sampler.num_layers,), jnp.float32),
          'level': jnp.asarray(len(sampler.scopes) - 1, jnp.int32),
          'valid': jnp.asarray(False), **sampler.pending_fields()}


def _draw(sampler, params, grads, rng) -> dict:
  """A pending draw made now: the sampler's hard gates and fields, their
  scope level, valid."""
  drawn = sampler.draw(params, grads, rng)
  return {**drawn, 'level': sampler.scopes.level(drawn['gates']),
          'valid': jnp.asarray(True)}


def ahead_step(state, batch: dict, val_batch: dict, *, setup, level: int):
  """One meta iteration as one program on the static scope `level`, its gates
  drawn in the previous meta iteration.

  The gates are `state.sampler_state`'s pending draw (`level` must be its
  scope or larger), straight-through in the current η
  (`sampler.begin_pending`). With no valid draw (the first meta iteration, or
  one after a warm-up) they are drawn now, as `meta_begin` draws them (same
  key, so the iteration equals the one-program gated step), and `level` must
  be the full scope. After Meta-Train, sampler update and Actual-Train, the
  next meta iteration's gates are drawn from this iteration's Virtual-Train
  gradient with the updated η and the key `fold_in(sampler key, 1)`.
  """
  sampler = setup.sampler
  begin, sampler_rng = core.forward_and_virtual(state, batch, setup)
  stored = state.sampler_state
  now = _draw(sampler, state.sampler_params, begin.sampler_grads, sampler_rng)
  pending = jax.tree_util.tree_map(lambda a, b: jnp.where(stored['valid'], a, b),
                                   stored, now)
  selection, begin_state = sampler.begin_pending(state.sampler_params, pending)
  new_state, metrics = core.meta_finish(
      state, begin._replace(selection=selection, begin_state=begin_state), batch,
      val_batch, setup=setup, scope=sampler.scopes.scopes[level])
  upcoming = _draw(sampler, new_state.sampler_params, begin.sampler_grads,
                   jax.random.fold_in(sampler_rng, 1))
  return new_state.replace(sampler_state=upcoming), metrics
