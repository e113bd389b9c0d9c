"""How close is the FaMUS meta gradient to the exact one, and is it less noisy?

Trains MW-Net + FaMUS (K=4, L_r) on digits with label noise and, every few
iterations, at the current state and on a fresh (train, meta) batch pair,
computes the meta gradient of every candidate layer on its own,
`g_l = meta_grad(gate = one-hot(l))` (vmapped over l). The meta gradient is
linear in the gates, so `Σ_l g_l` is the exact meta gradient (checked against
`meta_grad` without gates: `sum_check`) and any selection r gives `Σ_l r_l g_l`
exactly. The FaMUS gates are drawn from the learned samplers' probabilities at
that state (hard Gumbel: P(r_l = 1) = sigmoid(logit_select − logit_skip)).

Reported over training (JSON + PNG):
- cosine similarity and relative error ‖g' − g‖/‖g‖ between the FaMUS meta
  gradient g' and the exact g (mean over Gumbel draws), next to "random s=K
  layers" and an oracle (the K layers with the largest ⟨g_l, g⟩);
- the share ⟨g_l, g⟩/‖g‖² of each layer and the FaMUS selection probability;
- the mini-batch variance of each estimator at a few points: for B batch pairs
  at a fixed state: tr Cov(ĝ) relative to the exact estimator's E‖g‖², the
  direction variance 1 − ‖E[ĝ/‖ĝ‖]‖² (scale-free: the FaMUS gradient has a
  different norm), tr Cov(ĝ)/‖E ĝ‖², and the cosine of each single-batch
  estimate with the expected exact gradient E_b[g_b] — to test the paper's
  claim that sampling layers reduces the variance of the estimate.
- the participation ratio of the per-layer θ contributions (≈ 1: all layers'
  contributions are parallel, so θ-space cosines are ±1 and say little; the
  per-example signal ∂L^val/∂V_i, n-dimensional, is then the telling one).

  python -m experiments.paper.meta_grad_fidelity --quick      # ~2 min on 2 CPU cores
  python -m experiments.paper.meta_grad_fidelity              # longer run, more points

Writes experiments/results/meta_grad_fidelity[_quick].{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import famus_jax as fj
from experiments import common
from experiments import digits_lab as lab


def make_probe(capture: lab.Capture):
  """jit(state, train, val) -> (exact (P,), per-layer (L, P), P(select) (L,),
  exact per-example signal (n,), per-layer per-example signal (L, n))."""
  setup, sampler = capture.setup, capture.sampler
  eye = jnp.eye(sampler.num_layers, dtype=jnp.float32)
  given = fj.get_meta_model('l2r')   # V_i = ε_i: ∂L^val/∂ε_i is the per-example signal

  @jax.jit
  def probe(state, train, val):
    batch = {'image': train['image'], 'label': train['label']}
    theta = setup.meta_model.lookahead_params(state.meta_params, batch['label'].shape[0])
    kw = dict(apply_fn=setup.apply_fn, meta_model=setup.meta_model,
              lr=setup.lr_schedule(state.step), batch_stats=state.batch_stats)
    exact = fj.meta_grad(theta, state.params, batch, val, **kw)
    per_layer = jax.vmap(lambda r: lab.flatten(fj.meta_grad(
        theta, state.params, batch, val, gate=sampler.leaf_gates(r), **kw).theta))(eye)
    logits = sampler.gate_logits(state.sampler_params, sampler.features(exact.virtual.grads))
    p_select = jax.nn.sigmoid(logits[:, 1] - logits[:, 0])
    # Example space: c_i = ∂L^val/∂V_i at this batch's MW-Net weights V(θ)
    # (the same look-ahead ŵ), whose VJP through V(θ) is the θ gradient.
    kw_given = {**kw, 'meta_model': given}
    weights = exact.virtual.weights
    signal = fj.meta_grad(weights, state.params, batch, val, **kw_given).theta
    per_layer_signal = jax.vmap(lambda r: fj.meta_grad(
        weights, state.params, batch, val, gate=sampler.leaf_gates(r), **kw_given).theta)(eye)
    return lab.flatten(exact.theta), per_layer, p_select, signal, per_layer_signal

  return probe


def cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def rel_err(est, ref):
  return float(np.linalg.norm(est - ref) / (np.linalg.norm(ref) + 1e-30))


def draw_gates(rng, p_select, draws):
  return (rng.uniform(size=(draws, p_select.size)) < p_select[None]).astype(np.float64)


def random_gates(rng, num_layers, s, draws):
  gates = np.zeros((draws, num_layers))
  for d in range(draws):
    gates[d, rng.choice(num_layers, s, replace=False)] = 1.0
  return gates


def oracle_gates(per_layer, exact, k):
  gates = np.zeros(per_layer.shape[0])
  gates[np.argsort(-(per_layer @ exact))[:k]] = 1.0
  return gates


def fidelity_point(rng, exact, per_layer, p_select, signal, per_layer_signal, k, draws):
  gates = draw_gates(rng, p_select, draws)
  rgates = random_gates(rng, per_layer.shape[0], k, draws)
  famus = gates @ per_layer
  rand = rgates @ per_layer
  oracle = oracle_gates(per_layer, exact, k) @ per_layer
  norm2 = float(exact @ exact) + 1e-30
  famus_cos = [cosine(g, exact) for g in famus]
  sv = np.linalg.svd(per_layer, compute_uv=False)
  ex_famus = gates @ per_layer_signal
  ex_rand = rgates @ per_layer_signal
  ex_oracle = oracle_gates(per_layer_signal, signal, k) @ per_layer_signal
  return {
      'example_famus_cos': float(np.mean([cosine(g, signal) for g in ex_famus])),
      'example_random_cos': float(np.mean([cosine(g, signal) for g in ex_rand])),
      'example_oracle_cos': cosine(ex_oracle, signal),
      'example_famus_rel_err': float(np.mean([rel_err(g, signal) for g in ex_famus])),
      'example_random_rel_err': float(np.mean([rel_err(g, signal) for g in ex_rand])),
      'example_sum_check': rel_err(per_layer_signal.sum(0), signal),
      'famus_cos': float(np.mean(famus_cos)),
      'famus_cos_std': float(np.std(famus_cos)),
      'famus_cos_q10': float(np.quantile(famus_cos, 0.1)),
      'famus_cos_q90': float(np.quantile(famus_cos, 0.9)),
      # participation ratio of the per-layer θ contributions: ≈ 1 when all
      # layers' contributions are (anti)parallel (then cosines are ±1).
      'theta_effective_dim': float(sv.sum() ** 2 / max((sv ** 2).sum(), 1e-30)),
      'famus_rel_err': float(np.mean([rel_err(g, exact) for g in famus])),
      'famus_norm_ratio': float(np.mean(np.linalg.norm(famus, axis=1)) / np.sqrt(norm2)),
      'random_cos': float(np.mean([cosine(g, exact) for g in rand])),
      'random_rel_err': float(np.mean([rel_err(g, exact) for g in rand])),
      'oracle_cos': cosine(oracle, exact),
      'oracle_rel_err': rel_err(oracle, exact),
      'layer_share': (per_layer @ exact / norm2).tolist(),
      'p_select': p_select.tolist(),
      'expected_selected': float(p_select.sum()),
      'sum_check': rel_err(per_layer.sum(0), exact),
  }


def average_points(points: list[dict]) -> dict:
  """Field-wise mean of fidelity points (lists element-wise)."""
  out = {}
  for key in points[0]:
    vals = [p[key] for p in points]
    out[key] = (np.mean(vals, 0).tolist() if isinstance(vals[0], list)
                else float(np.max(vals)) if 'sum_check' in key else float(np.mean(vals)))
  return out


def estimator_stats(samples: np.ndarray, reference: np.ndarray,
                    exact_second_moment: float) -> dict:
  """Mini-batch statistics of one estimator from (B, P) samples.

  `relative_variance` = tr Cov / ‖mean‖² is unreliable when the mean is small
  next to the noise (it is then ≈ B); `direction_variance` = 1 − ‖E[ĝ/‖ĝ‖]‖²
  (0: every batch gives the same direction, ≈ 1: random directions) and
  `variance_vs_exact` = tr Cov / E‖g_exact‖² are the robust ones.
  """
  mean = samples.mean(0)
  total_var = float(np.mean(np.sum((samples - mean) ** 2, axis=1)))
  units = samples / (np.linalg.norm(samples, axis=1, keepdims=True) + 1e-30)
  unit_mean = units.mean(0)
  return {'trace_cov': total_var,
          'mean_norm2': float(mean @ mean),
          'second_moment': float(np.mean(np.sum(samples ** 2, axis=1))),
          'relative_variance': total_var / (float(mean @ mean) + 1e-30),
          'direction_variance': float(1.0 - unit_mean @ unit_mean),
          'variance_vs_exact': total_var / (exact_second_moment + 1e-30),
          'cos_to_expected_exact': float(np.mean([cosine(g, reference) for g in samples])),
          'cos_to_own_mean': float(np.mean([cosine(g, mean) for g in samples]))}


def variance_point(capture, probe, rng, k, pairs):
  exact, famus, rand = [], [], []
  for _ in range(pairs):
    e, per_layer, p, _, _ = (np.asarray(x, np.float64) for x in jax.device_get(
        probe(capture.state, *capture.random_batches(rng))))
    exact.append(e)
    famus.append(draw_gates(rng, p, 1)[0] @ per_layer)
    rand.append(random_gates(rng, per_layer.shape[0], k, 1)[0] @ per_layer)
  exact, famus, rand = map(np.stack, (exact, famus, rand))
  reference = exact.mean(0)
  second = float(np.mean(np.sum(exact ** 2, axis=1)))
  return {'step': int(capture.state.step), 'pairs': pairs,
          **{name: estimator_stats(x, reference, second)
             for name, x in (('exact', exact), ('famus', famus), ('random', rand))}}


def trajectory_point(capture, probe, rng, step, k, draws, probe_pairs) -> dict:
  """The fidelity at iteration `step`, averaged over `probe_pairs` batch pairs."""
  per_pair = []
  for _ in range(probe_pairs):
    out = (np.asarray(x, np.float64) for x in
           jax.device_get(probe(capture.state, *capture.random_batches(rng))))
    per_pair.append(fidelity_point(rng, *out, k, draws))
  point = {'step': step, **average_points(per_pair)}
  print(f"it {step:5d}  cos θ FaMUS {point['famus_cos']:.3f}  random "
        f"{point['random_cos']:.3f}  oracle {point['oracle_cos']:.3f} | per-example "
        f"FaMUS {point['example_famus_cos']:.3f} random {point['example_random_cos']:.3f} "
        f"oracle {point['example_oracle_cos']:.3f} | "
        f"E[#sel] {point['expected_selected']:.1f}  sum-check {point['sum_check']:.1e}",
        file=sys.stderr, flush=True)
  return point


def plot(path, payload):
  matplotlib.use('Agg')
  pts = payload['trajectory']
  steps = [p['step'] for p in pts]
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  ax = axes[0, 0]
  ax.plot(steps, [p['famus_cos'] for p in pts], marker='o', color='C0',
          label=f"FaMUS (K={payload['k']}), mean over Gumbel draws")
  ax.fill_between(steps, [p['famus_cos_q10'] for p in pts], [p['famus_cos_q90'] for p in pts],
                  color='C0', alpha=0.15, label='FaMUS 10–90 % of draws')
  ax.plot(steps, [p['random_cos'] for p in pts], marker='s', color='C1',
          label=f"random s={payload['k']}")
  ax.plot(steps, [p['oracle_cos'] for p in pts], ls='--', color='C2',
          label=f"oracle top-{payload['k']}")
  ax.plot(steps, [p['example_famus_cos'] for p in pts], color='C0', ls=':', marker='.',
          label='FaMUS, per-example signal')
  ax.plot(steps, [p['example_random_cos'] for p in pts], color='C1', ls=':', marker='.',
          label='random, per-example signal')
  ax.set(xlabel='iteration', ylabel='cosine with exact',
         title='direction fidelity (θ gradient; dotted: ∂L^val/∂V_i)')
  ax.axhline(0, color='gray', lw=0.5)
  ax.legend(fontsize=7)
  ax = axes[0, 1]
  ax.plot(steps, [p['famus_rel_err'] for p in pts], marker='o', label='FaMUS')
  ax.plot(steps, [p['random_rel_err'] for p in pts], marker='s', label='random')
  ax.plot(steps, [p['oracle_rel_err'] for p in pts], ls='--', label='oracle')
  ax.set(xlabel='iteration', ylabel='‖g′ − g‖ / ‖g‖', title='relative error')
  ax.legend()
  ax = axes[1, 0]
  var = payload['variance']
  names = ('exact', 'famus', 'random')
  x = np.arange(len(var))
  width = 0.27
  for i, name in enumerate(names):
    ax.bar(x + (i - 1) * width, [v[name]['direction_variance'] for v in var], width,
           label=f'{name} (direction)', color=f'C{i}')
    ax.plot(x + (i - 1) * width, [v[name]['variance_vs_exact'] for v in var], 'k_',
            markersize=12)
  ax.set_xticks(x, [f"it {v['step']}" for v in var])
  ax.set(ylabel='1 − ‖E[ĝ/‖ĝ‖]‖²   (bars)',
         title=f"mini-batch variance over {var[0]['pairs'] if var else 0} batch pairs "
         "(—: tr Cov(ĝ)/E‖g_exact‖²)")
  ax.legend(fontsize=7)
  ax = axes[1, 1]
  share = np.array([p['layer_share'] for p in pts]).mean(0)
  prob = np.array([p['p_select'] for p in pts]).mean(0)
  names_l = payload['layers']
  xs = np.arange(len(names_l))
  ax.bar(xs, share, color='C0', label='share ⟨g_l, g⟩/‖g‖² (mean over training)')
  ax.set_xticks(xs, names_l, rotation=70, fontsize=7)
  ax.set_ylabel('share of the exact meta gradient')
  ax2 = ax.twinx()
  ax2.plot(xs, prob, 'o-', color='C3', label='FaMUS P(select)')
  ax2.set_ylabel('FaMUS selection probability', color='C3')
  ax2.set_ylim(0, 1)
  ax.set_title('per-layer contribution vs selection')
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, fontsize=7, loc='upper left')
  m = payload['machine']
  fig.suptitle(f"FaMUS vs exact meta gradient — MW-Net on digits, "
               f"{payload['noise_rate']:.0%} {payload['noise_type']} noise "
               f"({m['device_kind']}, {payload['steps']} iterations)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  lab.add_common_flags(parser, steps=2000, quick_steps=600, smoke_steps=6)
  parser.add_argument('--noise-rate', type=float, default=0.4)
  parser.add_argument('--noise-type', default='symmetric')
  parser.add_argument('--k', type=int, default=4)
  parser.add_argument('--every', type=int, default=None, help='probe every N iterations')
  parser.add_argument('--draws', type=int, default=64, help='Gumbel draws per probe')
  parser.add_argument('--probe-pairs', type=int, default=None,
                      help='batch pairs averaged per trajectory point (full 8, quick 4)')
  parser.add_argument('--pairs', type=int, default=None,
                      help='batch pairs per variance point (full 64, quick 32)')
  parser.add_argument('--variance-points', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  steps = lab.resolve_steps(args)
  model = lab.SMOKE_MODEL if args.smoke else None
  every = args.every or max(1, steps // (3 if args.smoke else 20))
  pairs = args.pairs or (3 if args.smoke else 64 if args.quick else 128)
  draws = 8 if args.smoke else args.draws
  probe_pairs = args.probe_pairs or (1 if args.smoke else 4 if args.quick else 8)
  lab.enable_compilation_cache(args.xla_cache)

  start = time.perf_counter()
  config = lab.digits_config(
      steps=steps, model=model, seed=args.seed,
      meta=dict(sampler='famus', k=args.k, lambda2=0.0),
      data=dict(noise_type=args.noise_type, noise_rate=args.noise_rate))
  rng = np.random.default_rng(args.seed)
  var_at = {int(round(steps * f)) for f in np.linspace(0, 1, args.variance_points + 1)[1:]}
  trajectory, variance, probes = [], [], []

  def at(capture, step):
    if not probes:
      probes.append(make_probe(capture))
    probe = probes[0]
    if step % every == 0 or step == steps:
      trajectory.append(trajectory_point(capture, probe, rng, step, args.k, draws,
                                         probe_pairs))
    if step in var_at or (step == 0 and args.smoke):
      variance.append(variance_point(capture, probe, rng, args.k, pairs))

  capture = lab.Capture(at)
  test_accuracy = lab.run(config, capture)['final_test_accuracy']
  payload = {
      'script': 'experiments.paper.meta_grad_fidelity', 'quick': args.quick, 'smoke': args.smoke,
      'steps': steps, 'every': every, 'draws': draws, 'probe_pairs': probe_pairs,
      'k': args.k, 'seed': args.seed,
      'noise_type': args.noise_type, 'noise_rate': args.noise_rate,
      'model': config.model.to_dict(), 'layers': capture.layer_names,
      'method': 'mwnet + famus (K=%d, lambda1=0.1)' % args.k,
      'trajectory': trajectory, 'variance': variance,
      'summary': {
          'famus_cos_mean': float(np.mean([p['famus_cos'] for p in trajectory])),
          'random_cos_mean': float(np.mean([p['random_cos'] for p in trajectory])),
          'oracle_cos_mean': float(np.mean([p['oracle_cos'] for p in trajectory])),
          'famus_rel_err_mean': float(np.mean([p['famus_rel_err'] for p in trajectory])),
          'random_rel_err_mean': float(np.mean([p['random_rel_err'] for p in trajectory])),
          'example_famus_cos_mean': float(np.mean([p['example_famus_cos'] for p in trajectory])),
          'example_random_cos_mean': float(np.mean([p['example_random_cos'] for p in trajectory])),
          'example_oracle_cos_mean': float(np.mean([p['example_oracle_cos'] for p in trajectory])),
          'max_sum_check': float(max(max(p['sum_check'], p['example_sum_check'])
                                     for p in trajectory)),
          'relative_variance': {n: [v[n]['relative_variance'] for v in variance]
                                for n in ('exact', 'famus', 'random')},
          'direction_variance': {n: [v[n]['direction_variance'] for v in variance]
                                 for n in ('exact', 'famus', 'random')},
          'variance_vs_exact': {n: [v[n]['variance_vs_exact'] for v in variance]
                                for n in ('exact', 'famus', 'random')},
          'theta_effective_dim_mean': float(np.mean([p['theta_effective_dim']
                                                     for p in trajectory])),
          'cos_to_expected_exact': {n: [v[n]['cos_to_expected_exact'] for v in variance]
                                    for n in ('exact', 'famus', 'random')},
          'final_test_accuracy': test_accuracy,
      },
      'wall_s': time.perf_counter() - start,
      'machine': common.machine(),
  }
  results_dir = args.results_dir or common.RESULTS_DIR
  name = f'meta_grad_fidelity{lab.suffix(args)}'
  path = common.write_json(name + '.json', payload, results_dir)
  plot(path[:-5] + '.png', payload)
  s = payload['summary']
  print(f"mean cosine with exact: FaMUS {s['famus_cos_mean']:.3f}, random "
        f"{s['random_cos_mean']:.3f}, oracle {s['oracle_cos_mean']:.3f}; direction variance "
        f"exact/FaMUS/random: {s['direction_variance']}; tr Cov / E|g_exact|^2: "
        f"{s['variance_vs_exact']}")
  print('wrote', path, 'and', path[:-5] + '.png')
  return payload


if __name__ == '__main__':
  main()
