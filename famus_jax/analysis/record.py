"""The per-example record of a training run: what the meta model and the network
said about each training example, kept on the devices during training.

A record is a dict of (N,) arrays, N the training split's size rounded up to a
multiple of the device count (the padding rows are never written), sharded
along the batch axis of the mesh like a batch; row i is training example i
(the batches' 'index'):

- `trust`: exponential moving average, over the example's visits, of the
  method's trust in its given label (`SIGNALS`): MW-Net and L2R the relative
  meta-weight n·V_i (1 = the uniform weight), MLC the corrected-label
  probability of the given label, plain cross-entropy the network's probability
  of it;
- `trust_count`: how many visits entered `trust`;
- `confidence`: moving average of the network's probability of the given label
  (exp of the example's training loss);
- `disagreement`: moving average of 1[predicted class ≠ given label];
- `seen`: visits; `loss`, `prediction`: the last visit's training loss and
  predicted class (-1 before the first visit);
- with Algorithm 2, `gmm_clean_net1` / `gmm_clean_net2`: each network's last
  GMM clean probability (-1 outside the GMM's pool or before the first split).

A moving average is the exponentially weighted mean of the example's visits,
bias-corrected: of k visits, visit j weighs decay^(k−j) (`train.label_ema`;
0: the last visit only, 1: the mean of all visits).

The update after each iteration is one small jitted scatter (`ExampleRecord`),
outside the training step: it reads the step's per-example metrics
('weights', 'example_loss', 'prediction') and the batch's 'index' and 'label'.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from famus_jax.training import sharding as sharding_lib
from famus_jax.training import strategies

GMM_FIELDS = {'net1': 'gmm_clean_net1', 'net2': 'gmm_clean_net2'}
CHECKPOINT_ITEM = 'label_record'  # the record's item in a checkpoint


@dataclasses.dataclass(frozen=True)
class Signal:
  """A method's per-example trust in the given label, from a step's metrics.

  Attributes:
    fn: metrics -> (n,) trust (higher: the label looks right).
    requires: metric keys the step must have returned for `fn` to apply (steps
      without them, e.g. the cross-entropy warm-up, update the rest only).
    scale: 'weight' (relative meta-weight, 1 = uniform, ≥ 0) or 'probability'
      (in [0, 1]); how `famus_jax.analysis.label_issues` maps it to a score.
    name: what `trust` holds, in words.
  """
  fn: Callable[[dict], jax.Array]
  requires: tuple[str, ...]
  scale: str
  name: str


def relative_weight(metrics: dict) -> jax.Array:
  """n·V_i: the meta-weight relative to the uniform weight 1/n."""
  weights = metrics['weights']
  return weights * weights.shape[0]


def label_probability(metrics: dict) -> jax.Array:
  """exp(−loss): the probability the (corrected) model gives the given label."""
  return jnp.exp(-metrics['example_loss'])


# Keyed by config meta.method. L2R's and MLC's weights on iterations without a
# meta step are uniform / uncorrected, so only meta iterations ('val_loss')
# count for them.
SIGNALS: dict[str, Signal] = {
    'mwnet': Signal(relative_weight, ('weights',), 'weight', 'meta-weight'),
    'l2r': Signal(relative_weight, ('weights', 'val_loss'), 'weight', 'meta-weight'),
    'mlc': Signal(label_probability, ('val_loss',), 'probability',
                  'corrected-label probability'),
    'mlc_transition': Signal(label_probability, ('weights',), 'probability',
                             'corrected-label probability'),
    'ce': Signal(label_probability, (), 'probability', 'label probability'),
}
assert set(SIGNALS) == set(strategies.STRATEGIES)
SCALES = ('weight', 'probability')
assert {s.scale for s in SIGNALS.values()} <= set(SCALES)


def empty_record(num_examples: int, *, gmm: bool = False) -> dict[str, np.ndarray]:
  """A record of `num_examples` rows that saw nothing (host arrays)."""
  f = lambda: np.zeros((num_examples,), np.float32)
  i = lambda: np.zeros((num_examples,), np.int32)
  record = {'trust': f(), 'trust_count': i(), 'confidence': f(), 'disagreement': f(),
            'seen': i(), 'loss': f(), 'prediction': np.full((num_examples,), -1, np.int32)}
  if gmm:
    record.update({k: np.full((num_examples,), -1.0, np.float32)
                   for k in GMM_FIELDS.values()})
  return record


def average_rate(count, decay: float):
  """The rate r of `a ← a + r·(x − a)` at an example's visit `count + 1` that
  keeps `a` the bias-corrected exponential average of its visits: visit j of k
  weighs decay^(k−j) (1 at the first visit; decay 0: the last value only, 1:
  the mean of all)."""
  if decay >= 1.0:
    return 1.0 / (count + 1.0)
  return (1.0 - decay) / (1.0 - decay ** (count + 1.0))


def moving_average(old: jax.Array, count: jax.Array, new: jax.Array, decay: float
                   ) -> jax.Array:
  """The average of `count` visits `old` with the visit `new` added."""
  return old + average_rate(count.astype(jnp.float32), decay) * (new - old)


def update_record(record: dict, index: jax.Array, labels: jax.Array, metrics: dict, *,
                  signal: Signal, decay: float, with_trust: bool) -> dict:
  """The record after one iteration's batch (pure; jit it)."""
  out = dict(record)
  seen = record['seen'][index]
  prediction = metrics['prediction']
  visit = {
      'confidence': jnp.exp(-metrics['example_loss']),
      'disagreement': (prediction != labels).astype(jnp.float32),
  }
  for key, value in visit.items():
    out[key] = record[key].at[index].set(
        moving_average(record[key][index], seen, value, decay))
  out['seen'] = record['seen'].at[index].add(1)
  out['loss'] = record['loss'].at[index].set(metrics['example_loss'])
  out['prediction'] = record['prediction'].at[index].set(prediction)
  if with_trust:
    count = record['trust_count'][index]
    trust = signal.fn(metrics).astype(jnp.float32)
    out['trust'] = record['trust'].at[index].set(
        moving_average(record['trust'][index], count, trust, decay))
    out['trust_count'] = record['trust_count'].at[index].add(1)
  return out


def padded_size(num_examples: int, num_devices: int) -> int:
  return -(-num_examples // num_devices) * num_devices


def to_host(record: dict, num_examples: int) -> dict[str, np.ndarray]:
  """The first `num_examples` rows of every field as numpy arrays (gathered
  from every process when the record spans several)."""
  leaves = jax.tree_util.tree_leaves(record)
  if all(getattr(x, 'is_fully_addressable', True) for x in leaves):
    host = jax.device_get(record)
  else:
    host = multihost_utils.process_allgather(record, tiled=True)
  return {k: np.asarray(v)[:num_examples] for k, v in host.items()}


class ExampleRecord:
  """The record of one run on a mesh, and its update programs.

  `programs` (name -> jitted function, each compiled once): 'record' (an
  iteration whose metrics carry the method's trust signal) and 'record_visit'
  (one without: loss, prediction and averages only).
  """

  def __init__(self, num_examples: int, method: str, decay: float, mesh, *,
               gmm: bool = False):
    self.num_examples = int(num_examples)
    self.signal = SIGNALS[method]
    self.mesh = mesh
    self.sharding = sharding_lib.batch_sharding(mesh)
    size = padded_size(self.num_examples, mesh.devices.size)
    self.state = {k: self._global(v) for k, v in empty_record(size, gmm=gmm).items()}
    self.programs = {
        name: jax.jit(functools.partial(update_record, signal=self.signal,
                                        decay=float(decay), with_trust=with_trust),
                      donate_argnums=(0,), out_shardings=self.sharding)
        for name, with_trust in (('record', True), ('record_visit', False))}

  def program_for(self, metrics: dict) -> str:
    return 'record' if all(k in metrics for k in self.signal.requires) else 'record_visit'

  def update(self, index: jax.Array, labels: jax.Array, metrics: dict) -> None:
    """After an iteration: `index`, `labels` the batch's (sharded like it),
    `metrics` the step's device metrics."""
    name = self.program_for(metrics)
    keys = ('example_loss', 'prediction') + (
        ('weights',) if name == 'record' and 'weights' in self.signal.requires else ())
    self.state = self.programs[name](self.state, index, labels,
                                     {k: metrics[k] for k in keys})

  def set_gmm(self, net: str, pool: np.ndarray, prob: np.ndarray) -> None:
    """Algorithm 2: `net`'s GMM clean probabilities of the examples in `pool`."""
    key = GMM_FIELDS[net]
    values = np.full((self.state[key].shape[0],), -1.0, np.float32)
    values[np.asarray(pool)] = np.asarray(prob, np.float32)
    self.state = {**self.state, key: self._global(values)}

  def _global(self, values: np.ndarray) -> jax.Array:
    """A host array every process holds whole, as one array sharded on the mesh."""
    return jax.make_array_from_callback(values.shape, self.sharding,
                                        lambda index: values[index])

  def restore(self, state: dict) -> None:
    self.state = state

  def host(self) -> dict[str, np.ndarray]:
    return to_host(self.state, self.num_examples)
