#!/usr/bin/env bash
# The FaMUS iteration table on an accelerator: WRN-28-10, batch 100, CIFAR
# shapes; plain step, exact MW-Net, FaMUS K=4 with gates as data, the random
# and static-scope rows, the last block, host dispatch (meta_begin and each of
# the 4 scope programs, whole iterations for top / bottom / random selections)
# and the one-program lax.switch step. Every program is compiled once ahead of
# time; the run stops after 8 minutes (compilation included).
#
#   bash experiments/accelerator_check.sh            # writes experiments/results/
#                                                    #   iteration_dispatch_<device>.json
#   bash experiments/accelerator_check.sh --smoke    # tiny ResNet on any machine (CPU: ~5 min)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--smoke" ]]; then
  out="${2:-/tmp/accelerator_check_smoke.json}"
  exec timeout 900 python -m experiments.benchmark_iteration --model=resnet32 --width=4 \
      --batch=8 --image-size=16 --variants=dispatch --levels=2 --repeats=2 \
      --with-switch --out="$out"
fi
exec timeout 480 python -m experiments.benchmark_iteration --model=wrn28_10 --batch=100 \
    --variants=dispatch --levels=4 --repeats=5 --with-switch
