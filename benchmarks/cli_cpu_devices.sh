#!/bin/bash
# purerl-train PPO CartPole jobs (PureJaxRL settings, 5e5 steps per seed) at 8 and 32 seeds:
# the CLI's default (XLA_FLAGS unset: one XLA device per core, set at start-up) against the
# same flag set by hand, alternating, two jobs each; env-steps/s from each job's run_seconds.
#   bash benchmarks/cli_cpu_devices.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/cli_cpu_devices}
mkdir -p "$out"
export PURERL_COMPILE_CACHE=$out/cache
PY=${PY:-.venv/bin/python}
cores=$(nproc)
for seeds in 8 32; do
  for variant in default by_hand default by_hand; do
    dir=$out/$variant-$seeds-$RANDOM
    if [ $variant = default ]; then
      env -u XLA_FLAGS -u PURERL_CPU_DEVICES $PY -m purerl.cli.train seeds=$seeds hydra.run.dir=$dir \
        save_policies=false print_table=false > $dir.out 2>&1
    else
      env -u PURERL_CPU_DEVICES XLA_FLAGS=--xla_force_host_platform_device_count=$cores $PY -m purerl.cli.train \
        seeds=$seeds hydra.run.dir=$dir save_policies=false print_table=false > $dir.out 2>&1
    fi
    $PY -c "
import json; r = json.load(open('$dir/job.json')); s = r['run_seconds']
print(f'$variant seeds=$seeds run {s:.2f} s  {$seeds * 500000 / s:,.0f} env-steps/s  load {open(\"/proc/loadavg\").read().split()[0]}')"
  done
done
