#!/usr/bin/env bash
# The FaMUS iteration table on an accelerator: WRN-28-10, batch 100, CIFAR
# shapes; plain step, exact MW-Net, FaMUS K=4 with gates as data, the random
# and static-scope rows, the last block, and for the 'host' (Algorithm 1's
# gates) and 'ahead' dispatchers each scope program alone, whole iterations
# for top / bottom / random selections and FaMUS's own gates over every layer
# with the configs' settings (after 200 warm iterations), and the one-program
# lax.switch step. WRN-28-10 has 4 scopes (by work: 6 / 10 / 23 / 54 of its 54
# layers), so 16 programs compile ahead of time: 6 one-program rows (plain,
# exact, FaMUS and random gates as data, static top-8, last block), host 1 + 4,
# ahead 4, switch 1 (about 20 s each on a GPU); the learned-gates rows time 5
# consecutive iterations per round. The run stops after 9.5 minutes
# (compilation included).
#
#   bash experiments/benchmarks/accelerator_check.sh            # writes experiments/results/
#                                                    #   iteration_dispatch_<device>.json
#   bash experiments/benchmarks/accelerator_check.sh --smoke    # tiny ResNet-32 on any machine, the
#                                                    #   same 16 programs (CPU: ~7 min)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--smoke" ]]; then
  out="${2:-/tmp/accelerator_check_smoke.json}"
  exec timeout 900 python -m experiments.benchmarks.benchmark_iteration --model=resnet32 --width=4 \
      --batch=8 --image-size=16 --variants=dispatch --repeats=2 --warm=3 \
      --with-switch --out="$out"
fi
exec timeout 570 python -m experiments.benchmarks.benchmark_iteration --model=wrn28_10 --batch=100 \
    --variants=dispatch --repeats=5 --warm=200 --with-switch
