"""Algorithm 2 (pseudo-clean meta sets, co-training, SSL terms): GMM split on
synthetic losses and degenerate inputs, the SSL terms on hand-made batches,
the SSL step against a hand derivation, the set exchange between the two
networks, configs, and an end-to-end digits run with 60 % noise and no clean
meta set against cross-entropy with the same budget."""

import functools
import json
import os
import signal
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from famus_jax import alg2
from famus_jax import core
from famus_jax import train
from famus_jax.alg2 import cotrain
from famus_jax.alg2 import config as alg2_config
from famus_jax.alg2 import epoch as epoch_lib
from famus_jax.alg2 import gmm as gmm_lib
from famus_jax.alg2 import sampling
from famus_jax.alg2 import ssl as ssl_lib
from famus_jax.alg2 import steps as steps_lib
from famus_jax.analysis import runs as runs_lib
from famus_jax.training import checkpoint as checkpoint_lib
from famus_jax.training import config as config_lib
from famus_jax.training.config import ConfigError
from tiny_models import TinyMLP, tiny_setup

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
CONFIGS = os.path.join(REPO, 'configs')


# ---------------------------------------------------------------------------
# GMM split.


def test_gmm_recovers_clean_set_of_two_mode_mixture():
  rng = np.random.default_rng(0)
  n_clean, n_noisy = 1400, 600
  clean = np.abs(rng.normal(0.2, 0.15, n_clean))  # small losses
  noisy = rng.normal(3.0, 0.6, n_noisy)  # large losses
  losses = np.concatenate([clean, noisy])
  truth = np.arange(losses.size) < n_clean
  perm = rng.permutation(losses.size)
  split = alg2.split_by_loss(losses[perm])
  assert split.warning is None
  got = np.empty_like(truth)
  got[perm] = split.clean
  tp = np.sum(got & truth)
  assert tp / got.sum() > 0.95 and tp / truth.sum() > 0.95
  # the clean probability is the posterior of the low-mean component
  assert split.means[0] < split.means[1]
  prob = np.empty(losses.size)
  prob[perm] = split.prob
  assert prob[np.argmin(losses)] > 0.99 and prob[np.argmax(losses)] < 0.01
  # precision/recall report against labels
  labels = np.where(truth, 1, 2)
  true_labels = np.ones(losses.size, int)
  rep = alg2.precision_recall(got, labels, true_labels)
  assert rep['precision'] > 0.95 and rep['recall'] > 0.95
  assert rep['clean_fraction'] == pytest.approx(0.7)


@pytest.mark.parametrize('losses,all_clean', [
    (np.full(50, 1.3), True),  # all equal
    (np.zeros(1), True),  # one example
    (np.zeros(0), True),  # none
])
def test_gmm_degenerate_inputs_do_not_crash(losses, all_clean):
  with pytest.warns(gmm_lib.GmmWarning):
    split = alg2.split_by_loss(losses)
  assert split.prob.shape == losses.shape and split.warning
  assert np.all(split.clean) == all_clean
  assert np.all((split.prob >= 0) & (split.prob <= 1))


def test_gmm_non_finite_and_empty_side_are_flagged():
  losses = np.concatenate([np.linspace(0, 0.1, 40), [np.nan, np.inf], np.full(20, 5.0)])
  with pytest.warns(gmm_lib.GmmWarning, match='non-finite'):
    split = alg2.split_by_loss(losses)
  assert not split.clean[40] and not split.clean[41]
  assert split.clean[:40].all()
  # a threshold no example passes: one set empty, flagged, no crash
  with pytest.warns(gmm_lib.GmmWarning, match='pseudo-clean set is empty'):
    split = alg2.split_by_loss(np.linspace(0, 1, 30), threshold=0.999999)
  assert not split.clean.any()


def test_precision_recall_by_hand_and_unknown_labels():
  pred = np.array([True, True, False, False, True])
  labels = np.array([0, 1, 2, 3, 4])
  true = np.array([0, 0, 2, 0, -1])  # clean: 0, 2; noisy: 1, 3; unknown: 4
  rep = alg2.precision_recall(pred, labels, true)
  assert rep['precision'] == 0.5 and rep['recall'] == 0.5
  assert rep['clean_fraction'] == 0.5 and rep['num_known'] == 4
  rep = alg2.precision_recall(np.zeros(5, bool), labels, true)
  assert rep['precision'] is None and rep['recall'] == 0.0


# ---------------------------------------------------------------------------
# SSL terms.


def test_sharpen_co_guess_refine_by_hand():
  p = jnp.array([[0.6, 0.4]])
  np.testing.assert_allclose(ssl_lib.sharpen(p, 0.5), [[0.36 / 0.52, 0.16 / 0.52]],
                             rtol=1e-6)
  guesses = [jnp.array([[0.9, 0.1]]), jnp.array([[0.7, 0.3]]),
             jnp.array([[0.5, 0.5]]), jnp.array([[0.3, 0.7]])]  # mean 0.6 / 0.4
  np.testing.assert_allclose(ssl_lib.co_guess(guesses, 0.5),
                             [[0.36 / 0.52, 0.16 / 0.52]], rtol=1e-6)
  onehot = jnp.array([[1.0, 0.0]])
  own = [jnp.array([[0.1, 0.9]]), jnp.array([[0.3, 0.7]])]  # mean 0.2 / 0.8
  # 0.8·[1, 0] + 0.2·[0.2, 0.8] = [0.84, 0.16] -> squares 0.7056, 0.0256
  np.testing.assert_allclose(ssl_lib.refine_labels(onehot, jnp.array([0.8]), own, 0.5),
                             [[0.7056 / 0.7312, 0.0256 / 0.7312]], rtol=1e-5)


def test_mixup_losses_prior_by_hand():
  x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  t = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  mx, mt = ssl_lib.mixup(x, t, 0.7, jnp.array([1, 0]))
  np.testing.assert_allclose(mx, [[0.7, 0.6], [0.3, 1.4]], rtol=1e-6)
  np.testing.assert_allclose(mt, [[0.7, 0.3], [0.3, 0.7]], rtol=1e-6)
  lams = jax.jit(jax.vmap(lambda k: ssl_lib.mixup_lambda(k, 4.0)))(jax.random.split(
      jax.random.PRNGKey(0), 100))
  assert float(lams.min()) >= 0.5 and float(lams.max()) <= 1.0
  # soft CE: uniform logits over 4 classes -> log 4 whatever the targets
  assert float(ssl_lib.soft_cross_entropy(jnp.zeros((3, 4)), jax.nn.one_hot(
      jnp.array([0, 1, 3]), 4))) == pytest.approx(np.log(4.0), rel=1e-6)
  # MSE: softmax [0.5, 0.5] vs [1, 0] -> mean(0.25, 0.25)
  assert float(ssl_lib.unlabeled_mse(jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]]))) == \
      pytest.approx(0.25)
  # prior: uniform mean prediction -> 0; mean [0.75, 0.25] -> ½ log(⅔) + ½ log 2
  assert float(ssl_lib.prior_penalty(jnp.zeros((4, 2)))) == pytest.approx(0.0, abs=1e-7)
  logits = jnp.log(jnp.array([[1.0, 0.0 + 1e-30], [0.5, 0.5]]))
  assert float(ssl_lib.prior_penalty(logits)) == pytest.approx(
      0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25), rel=1e-5)


def test_linear_rampup_schedule():
  r = lambda e: ssl_lib.linear_rampup(e, warmup_epochs=10, rampup_epochs=16)
  assert [r(0), r(10), r(14), r(18), r(26), r(100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
  assert ssl_lib.linear_rampup(9.9, 10, 0) == 0.0 and ssl_lib.linear_rampup(10, 10, 0) == 1.0


def test_ssl_step_matches_hand_derivation():
  """No mixup and no refinement: L_x is the CE of both labelled views, L_u the
  MSE to the co-guess of both networks, the update −α·∇(w_x L_x + λ_u L_u + L_π)."""
  model = TinyMLP(num_classes=3)
  rng = np.random.default_rng(1)
  img = lambda n: jnp.asarray(rng.normal(size=(n, 4, 4, 2)), jnp.float32)
  lab = {'image': img(4), 'image2': img(4), 'label': jnp.array([0, 1, 2, 1]),
         'prob': jnp.full((4,), 0.9)}
  unl = {'image': img(5), 'image2': img(5), 'true_label': jnp.array([0, 1, 2, 0, -1])}
  lr = 0.05
  setup = tiny_setup(model, lab['image'], meta__method='l2r', optim__lr=lr)
  ssl = steps_lib.SslSetup(num_classes=3, mixup=False, label_refine=False,
                           labeled_weight=0.7, prior_weight=0.3)
  state = core.create_train_state(jax.random.PRNGKey(0), model, lab['image'][:1], 3, setup)
  state = state.replace(step=jnp.ones((), jnp.int32))
  other = core.create_train_state(jax.random.PRNGKey(1), model, lab['image'][:1], 3, setup)
  lam_u = 2.5
  step = jax.jit(functools.partial(steps_lib.ssl_train_step, setup=setup, ssl=ssl))
  new, _, m = step(state, ssl.optimizer().init(state.params), other.params,
                   other.batch_stats, lab, unl, jnp.float32(lam_u))
  f = lambda p, x: model.apply({'params': p}, x, train=True)
  sm = lambda p, x: jax.nn.softmax(f(p, x))
  guess = ssl_lib.sharpen((sm(state.params, unl['image']) + sm(state.params, unl['image2'])
                           + sm(other.params, unl['image']) + sm(other.params, unl['image2']))
                          / 4, 0.5)

  def loss(p):
    lx = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        f(p, jnp.concatenate([lab['image'], lab['image2']])),
        jnp.concatenate([lab['label'], lab['label']])))
    u_logits = f(p, jnp.concatenate([unl['image'], unl['image2']]))
    lu = jnp.mean((jax.nn.softmax(u_logits) - jnp.concatenate([guess, guess])) ** 2)
    all_logits = f(p, jnp.concatenate([lab['image'], lab['image2'], unl['image'],
                                       unl['image2']]))
    return 0.7 * lx + lam_u * lu + 0.3 * ssl_lib.prior_penalty(all_logits), (lx, lu)

  (want, (lx, lu)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state.params)
  assert float(m['ssl_loss']) == pytest.approx(float(want), rel=1e-5)
  assert float(m['ssl_lx']) == pytest.approx(float(lx), rel=1e-5)
  assert float(m['ssl_lu']) == pytest.approx(float(lu), rel=1e-5)
  expect = jax.tree_util.tree_map(lambda p, g: p - lr * g, state.params, grads)
  for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  hits = np.argmax(np.asarray(guess), -1)[:4] == np.asarray(unl['true_label'])[:4]
  assert float(m['guess_accuracy']) == pytest.approx(hits.mean())
  assert int(new.step) == 1  # the SSL step does not advance the schedule


def test_index_stream_fixed_shapes_and_fallback():
  s = sampling.IndexStream(np.array([3, 5, 7, 9, 11]), 2, seed=0)
  batches = [next(s) for _ in range(4)]
  assert all(b.shape == (2,) for b in batches)
  assert set(np.concatenate(batches[:2])) <= {3, 5, 7, 9, 11}
  assert len(set(np.concatenate(batches[:2]))) == 4  # a pass draws without repeats
  small = sampling.IndexStream(np.array([4]), 3, seed=0)
  np.testing.assert_array_equal(next(small), [4, 4, 4])
  idx, fell = sampling.ensure_min_size(np.array([], int), np.array([0.1, 0.9, 0.5]), 2)
  assert fell and list(idx) == [1, 2]


# ---------------------------------------------------------------------------
# Co-training: the sets are exchanged.


def test_plan_takes_sets_from_the_other_network():
  prob1 = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
  prob2 = 1 - prob1
  splits = {'net1': gmm_lib.GmmSplit(prob1, prob1 > 0.5),
            'net2': gmm_lib.GmmSplit(prob2, prob2 > 0.5)}
  pool = np.array([10, 11, 12, 13, 14, 15])
  plans = alg2.plan_cotraining(splits, pool, 16, min_clean=1, min_noisy=1)
  assert plans['net1'].source == 'net2' and plans['net2'].source == 'net1'
  assert list(plans['net1'].meta) == [11, 13, 15]  # net2's pseudo-clean set
  assert list(plans['net1'].unlabeled) == [10, 12, 14]
  assert list(plans['net2'].meta) == [10, 12, 14]
  np.testing.assert_allclose(plans['net1'].prob[pool], prob2)


def _digits_config(**overrides):
  c = alg2_config.load_sibling('digits_alg2.py', os.path.join(CONFIGS, 'x.py'))
  c.train.progress = False
  for k, v in overrides.items():
    config_lib.set_field(c, k, v)
  return c


def _tiny_config(**overrides):
  c = _digits_config(**{
      'model.name': 'digits_mlp', 'model.kwargs': ml_collections.ConfigDict(
          {'width': 16, 'depth': 1}),
      'meta.sampler': 'all', 'data.batch_size': 128, 'data.meta_batch_size': 32,
      'optim.num_epochs': 2, 'optim.boundaries': (), 'alg2.warmup_epochs': 1,
      'alg2.gmm.during_warmup': False, 'alg2.ssl.batch_size': 32})
  for k, v in overrides.items():
    config_lib.set_field(c, k, v)
  return c


def test_cotraining_exchanges_meta_sets(tmp_path, monkeypatch):
  """net1's validation batches come from net2's GMM and vice versa."""
  real_split = gmm_lib.split_by_loss
  calls = []

  def fake_split(losses, **kwargs):  # net1's GMM: even indices clean; net2's: odd
    split = real_split(losses, **kwargs)
    parity = len(calls) % 2
    calls.append(parity)
    clean = np.arange(losses.size) % 2 == parity
    return gmm_lib.GmmSplit(np.where(clean, 0.9, 0.1), clean, split.means,
                            split.weights, split.warning)

  drawn = []  # validation batches in order: net1's epoch, then net2's
  real_val = epoch_lib.validation_batch

  def recording(val):
    drawn.append(np.asarray(val['index']))
    return real_val(val)

  monkeypatch.setattr(gmm_lib, 'split_by_loss', fake_split)
  monkeypatch.setattr(epoch_lib, 'validation_batch', recording)
  summary = train.train_and_evaluate(_tiny_config(), str(tmp_path))
  assert calls == [0, 1]  # one co-training epoch: net1's split, then net2's
  steps = summary['steps_per_epoch']
  assert len(drawn) == 2 * steps
  seen = {'net1': drawn[:steps], 'net2': drawn[steps:]}
  assert all((v % 2 == 1).all() for v in seen['net1'])  # from net2's split
  assert all((v % 2 == 0).all() for v in seen['net2'])  # from net1's split
  rows = [json.loads(line) for line in open(tmp_path / 'alg2_epochs.jsonl')]
  assert [r['phase'] for r in rows] == ['warmup', 'cotrain']
  assert rows[1]['net1']['trained_on']['meta_set_from'] == 'net2'
  assert summary['compiled'] == {'losses': 1, 'ssl': 1, 'eval': 1, 'meta': 1,
                                 'weighted': 0, 'plain': 1, 'record': 1,
                                 'record_visit': 1}


def _assert_equal(got, want, what):
  try:
    chex.assert_trees_all_equal(got, want)
  except AssertionError as e:
    raise AssertionError(f'{what} differs: {e}') from None


def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
  """SIGTERM while net2 trains epoch 2: the run stops (`Preempted`, the epoch in
  progress dropped, the checkpoint after epoch 2 kept); the re-run resumes at
  epoch 2 and ends exactly like an uninterrupted run: the same rows, and final
  checkpoints with bit-identical states of both networks (parameters, batch
  statistics, optimizer, meta model, RNG, SSL optimizer) and training loader."""
  c = _tiny_config(**{'optim.num_epochs': 3})
  layout = {}  # the checkpoint's tree: both networks' states and SSL optimizers
  real_init = cotrain.CoTraining.init_states

  def recording_init(self, trainer):
    states = real_init(self, trainer)
    layout.update(jax.eval_shape(lambda: {**states, **self.extra_state()}))
    return states

  monkeypatch.setattr(cotrain.CoTraining, 'init_states', recording_init)
  ref = train.train_and_evaluate(c, str(tmp_path / 'ref'))
  spe = ref['steps_per_epoch']
  real = train.Trainer.iterate

  def interrupted(self, member, step, validation):
    if step == 2 * spe and member == 'net2':
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self, member, step, validation)

  monkeypatch.setattr(train.Trainer, 'iterate', interrupted)
  with pytest.raises(train.Preempted) as e:
    train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert e.value.signum == signal.SIGTERM and e.value.step == 2 * spe
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints'), key=int) == [
      str(spe), str(2 * spe)]
  monkeypatch.setattr(train.Trainer, 'iterate', real)
  got = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert got['resumed_from'] == 2 * spe
  assert got['final'] == ref['final']
  read = lambda d, f: [{k: v for k, v in json.loads(line).items()
                        if k not in ('epoch_time_s', 'compiled', 'step_time_s',
                                     'steps_per_s')}
                       for line in open(tmp_path / d / f)]
  for f in ('alg2_epochs.jsonl', 'eval.jsonl'):
    assert read('run', f) == read('ref', f), f

  def final_checkpoint(d):
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / d / 'checkpoints'))
    try:
      state, data_state, step = ckpt.restore(layout, 3 * spe)
    finally:
      ckpt.close()
    assert step == 3 * spe
    return state, data_state

  (got, got_data), (want, want_data) = final_checkpoint('run'), final_checkpoint('ref')
  assert int(want['net1'].step) == 3 * spe
  assert jax.tree_util.tree_leaves(want['net1'].meta_params)
  for net in epoch_lib.NETS:
    for field in ('step', 'params', 'batch_stats', 'opt_state', 'meta_params',
                  'meta_opt_state', 'rng', 'sampler_params', 'sampler_opt_state'):
      _assert_equal(getattr(got[net], field),
                    getattr(want[net], field), f'{net} TrainState.{field}')
    _assert_equal(got['ssl'][net], want['ssl'][net], f'{net} SSL optimizer state')
  assert got_data == want_data
  # the per-example record, with both networks' GMM clean probabilities
  (got_record, _), (want_record, _) = (runs_lib.read_record(str(tmp_path / d), 3 * spe)
                                       for d in ('run', 'ref'))
  assert (want_record['gmm_clean_net1'] >= 0).any() and (want_record['seen'] > 0).all()
  _assert_equal(got_record, want_record, 'per-example record')


# ---------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'cnwl', 'clothing1m',
                                  'webvision', 'digits'])
def test_alg2_configs_validate(name):
  c = alg2_config.load_sibling(f'{name}_alg2.py', os.path.join(CONFIGS, 'x.py'))
  alg2_config.validate(c)
  assert c.algorithm == 'alg2' and c.data.meta_per_class == 0
  if name.startswith('cifar'):
    assert (c.model.name, c.data.batch_size, c.optim.lr, tuple(c.optim.boundaries),
            c.optim.num_epochs, c.meta.k) == ('preact_resnet18', 64, 0.02, (200, 250), 300, 4)
    assert c.meta.lambda1 in (0.0, 0.1) and c.meta.lambda2 in (0.0, 0.1)


def test_alg2_config_errors():
  c = _digits_config()
  c.data.meta_per_class = 10
  with pytest.raises(ConfigError, match='meta_per_class'):
    alg2_config.validate(c)
  c = _digits_config()
  with c.unlocked():
    c.alg2.ssl.bogus = 1
  with pytest.raises(ConfigError, match='alg2.ssl.bogus'):
    alg2_config.validate(c)
  with pytest.raises(ConfigError, match='warmup_epochs'):
    alg2_config.validate(_digits_config(**{'alg2.warmup_epochs': 40}))
  with pytest.raises(ConfigError, match='optim.unit'):
    alg2_config.validate(_digits_config(**{'optim.unit': 'step', 'optim.num_epochs': 0,
                                           'optim.num_steps': 100, 'optim.boundaries': ()}))
  with pytest.raises(ConfigError, match='threshold'):
    alg2_config.validate(_digits_config(**{'alg2.gmm.threshold': 1.5}))
  # a base-schema field Algorithm 2 does not read is rejected, not ignored
  with pytest.raises(ConfigError, match=r"config.train.eval_every=5: not used by "
                     r"Algorithm 2 \(it evaluates every alg2.eval_every_epochs\)"):
    alg2_config.validate(_digits_config(**{'train.eval_every': 5}))
  with pytest.raises(ConfigError, match='meta.warmup_epochs=2.*alg2.warmup_epochs'):
    alg2_config.validate(_digits_config(**{'meta.warmup_epochs': 2.0}))
  # the schema is base_config() + alg2: any base field is known
  c = _digits_config()
  with c.unlocked():
    c.optim.bogus = 1
  with pytest.raises(ConfigError, match=r'config.optim.bogus: unknown field; the schema '
                     r'is famus_jax.alg2.config.alg2_schema\(\)'):
    alg2_config.validate(c)


# ---------------------------------------------------------------------------
# End to end: digits, 60 % symmetric noise, no clean meta set.


@pytest.mark.slow
def test_digits_end_to_end_beats_ce_without_clean_meta_set(tmp_path):
  if REPO not in sys.path:  # `experiments` is not an installed package
    sys.path.insert(0, REPO)
  from experiments.studies import alg2_compare_digits as compare_digits  # pylint: disable=g-import-not-at-top
  short = {'optim.num_epochs': 8, 'optim.boundaries': (6,), 'alg2.warmup_epochs': 2,
           'alg2.ssl.rampup_epochs': 3.0, 'alg2.eval_every_epochs': 0}
  c = compare_digits.alg2_digits_config(0.6, 0, short)
  assert c.data.meta_per_class == 0 and c.meta.sampler == 'famus'
  summary = train.train_and_evaluate(c, str(tmp_path / 'alg2'))
  ce = train.train_and_evaluate(compare_digits.ce_config(c), str(tmp_path / 'ce'))
  for name in ('alg2_epochs.jsonl', 'gmm_precision_recall.png', 'summary.json',
               'config.json'):
    assert os.path.isfile(tmp_path / 'alg2' / name), name
  last = summary['gmm'][-1]
  for net in ('net1', 'net2'):
    clean_fraction = last[net]['clean_fraction']
    assert clean_fraction < 0.5  # 60 % symmetric noise (realised ~54 %)
    assert last[net]['precision'] > clean_fraction + 0.35, last
    assert last[net]['recall'] > 0.7, last
  acc, ce_acc = summary['final']['test_accuracy'], ce['final']['test_accuracy']
  assert acc > ce_acc + 0.04, (acc, ce_acc)
  assert min(summary['final']['test_accuracy_net1'],
             summary['final']['test_accuracy_net2']) > ce_acc, (summary['final'], ce_acc)
  compiled = dict(summary['compiled'])
  assert compiled.pop('weighted') == 0, compiled  # meta.interval = 1: never run
  assert all(v == 1 for v in compiled.values()), compiled
