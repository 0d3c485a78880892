"""One process of the multi-process sweep test (tests/test_distributed.py).

    python tests/distributed_sweep_worker.py OUT.npz DEVICES [COORDINATOR NUM_PROCESSES PROCESS_ID]

Trains a tiny PPO sweep (2 settings x 2 seeds) with `purerl.sweep.run` on DEVICES CPU
devices per process, under `jax.distributed` when a coordinator is given, and saves what
this process holds afterwards: every metric and the final parameters, full [setting, seed, ...].
"""

import os
import sys

out, devices, *cluster = sys.argv[1:]
# Before JAX starts: this process's CPU devices, and CPU only (several processes must not
# share one GPU).
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(devices)}"
os.environ["JAX_PLATFORMS"] = "cpu"

from purerl import distributed  # noqa: E402

if cluster:
    coordinator, num_processes, process_id = cluster
    distributed.initialize(coordinator, int(num_processes), int(process_id))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from purerl import sweep  # noqa: E402
from purerl.algos import ppo  # noqa: E402

train = ppo.make_train(ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=48))
result = sweep.run(train, sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3]), seeds=[3, 4], return_state=True)
params = {f"param/{jax.tree_util.keystr(path)}": np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(result.final_state.params)}
np.savez(out, process_count=jax.process_count(), global_devices=jax.device_count(),
         **{f"metric/{k}": v for k, v in result.metrics.items()}, **params)
