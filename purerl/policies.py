"""Saved policies: store the final parameters and observation statistics of every run of
a job, and load them back as callable policies.

- storage: `save_policies`, `remove_policies`, `load_policies` -> `SavedPolicies` (every
  run of a job, arrays with leading [setting, seed] axes), `PoliciesNotFound`, and
  `supports` (which Configs can save policies);
- acting: `load_policy` / `SavedPolicies.policy` -> `Policy`, one run's policy as a
  jittable function `policy(obs, key=None, deterministic=True) -> action`.

Evaluating saved policies is `purerl.rl.evaluation.evaluate` / `evaluation_table` (the
episode runner training's periodic evaluation uses); drawing an episode of one is
`purerl.rendering`.

A job directory with saved policies holds

    policies/
        index.json   what was trained: algorithm, every `Config` field, the settings (the
                     in-job grid, index = the `setting` column of the results), the seeds,
                     and the job's fingerprint
        state/       an orbax checkpoint {"params": ..., "obs_stats": {mean, var, count}},
                     every leaf with leading [setting, seed] axes ("obs_stats" only when the
                     config normalises observations)

Optimiser state and env runners are not stored: a saved policy is for acting, not for
resuming training. The index carries the `Config`, so a saved policy rebuilds its network
without the Hydra config and stays consistent with its parameters even if other files of
the job are rewritten later.

Writes are atomic at the directory level: everything goes into a hidden temporary
directory next to `policies/` (`.policies.tmp-*`), and only a finished one is renamed to
`policies/`. A process killed while saving leaves at most a hidden temporary directory,
which nothing reads (and the next save removes); `load_policies` only ever opens
`policies/`.

JAX and orbax are imported when a policy is saved or loaded, not with this module, so
`import purerl` stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from purerl import orbax_io

POLICIES = "policies"
INDEX = "index.json"
STATE = "state"
FORMAT = 1
_TMP_PREFIX = f".{POLICIES}.tmp-"
_OLD_PREFIX = f".{POLICIES}.old-"


class PoliciesNotFound(FileNotFoundError):
    """The directory holds no complete saved policies."""


# ---------------------------------------------------------------- saving
def _config_record(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a frozen Config holds."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def supports(config: Any) -> bool:
    """Whether jobs of this Config can save policies: the on-policy actor-critics (PPO, A2C,
    TRPO, REINFORCE), whose network `load_policy` rebuilds from the Config. Off-policy,
    bandit and language-model algorithms keep other states; they are not handled yet."""
    from purerl.config import OnPolicyConfig

    return isinstance(config, OnPolicyConfig)


def _batched_tree(final_state: Any) -> dict[str, Any]:
    """{"params", "obs_stats"?} as host arrays; opt_state and runner are dropped."""
    import jax

    # Variants that carry more than the agent (stale PPO's rollout buffer) keep the
    # on-policy TrainState as `.agent`; only the agent is a policy.
    final_state = getattr(final_state, "agent", final_state)
    params = getattr(final_state, "params", None)
    if params is None:
        raise ValueError(
            f"final_state: a {type(final_state).__name__} has no `params`; allowed: an on-policy "
            "TrainState (purerl.rl.on_policy) from sweep.run(..., return_state=True)"
        )
    tree: dict[str, Any] = {"params": jax.tree.map(np.asarray, params)}
    stats = getattr(final_state, "obs_stats", None)
    if stats is not None:
        tree["obs_stats"] = {name: np.asarray(getattr(stats, name)) for name in ("mean", "var", "count")}
    return tree


def remove_policies(job_dir: str | os.PathLike) -> None:
    """Delete a job's saved policies and any temporary leftovers of killed saves."""
    job_dir = Path(job_dir)
    for path in [job_dir / POLICIES, *job_dir.glob(_TMP_PREFIX + "*"), *job_dir.glob(_OLD_PREFIX + "*")]:
        shutil.rmtree(path, ignore_errors=True)


def save_policies(
    job_dir: str | os.PathLike,
    final_state: Any,
    *,
    algo: str,
    config: Any,
    settings: Sequence[dict[str, float]],
    seeds: Sequence[int],
    fingerprint: str | None = None,
) -> Path:
    """Save the params (+ observation statistics) of every run of a batch, atomically.

    `final_state` is `sweep.run(..., return_state=True).final_state`: a TrainState whose
    leaves have leading [setting, seed] axes. Returns the `policies/` directory."""
    import jax

    job_dir = Path(job_dir).resolve()
    seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
    tree = _batched_tree(final_state)
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[:2] != (len(settings), len(seeds)):
            raise ValueError(
                f"final_state: a leaf has leading shape {leaf.shape[:2]}; allowed: "
                f"[setting, seed] = {(len(settings), len(seeds))} (sweep.run's final_state)"
            )
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*job_dir.glob(_TMP_PREFIX + "*"), *job_dir.glob(_OLD_PREFIX + "*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed save

    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=job_dir))
    try:
        with orbax_io.checkpointer() as checkpointer, orbax_io.orbax_path(tmp / STATE) as state_path:
            checkpointer.save(state_path, tree)
            checkpointer.wait_until_finished()
        index = {
            "format": FORMAT,
            "algo": algo,
            "config": _config_record(config),
            "settings": [{k: float(v) for k, v in s.items()} for s in settings],
            "seeds": seeds,
            "normalize_obs": "obs_stats" in tree,
            "fingerprint": fingerprint,
            "saved": time.time(),
        }
        # The index goes last: a temporary directory without it was never finished.
        with open(tmp / INDEX, "w") as f:
            json.dump(index, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, job_dir / POLICIES)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return job_dir / POLICIES


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temporary directory to `final` (moving an older one aside)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=_OLD_PREFIX, dir=final.parent))
        os.replace(final, old / POLICIES)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- loading
@dataclasses.dataclass
class SavedPolicies:
    """Every saved policy of one job: arrays with leading [setting, seed] axes."""

    job_dir: Path
    algo: str
    config: Any
    settings: list[dict[str, float]]
    seeds: list[int]
    params: Any
    obs_stats: Any  # RunningStats with [setting, seed] leading axes, or None
    fingerprint: str | None

    def index(self, setting: int, seed: int) -> tuple[int, int]:
        """(setting, position of `seed`), or a ValueError naming what is allowed."""
        if isinstance(setting, bool) or not isinstance(setting, (int, np.integer)) or not (
            0 <= setting < len(self.settings)
        ):
            raise ValueError(f"setting: got {setting!r}; allowed: 0..{len(self.settings) - 1} ({self.job_dir})")
        if seed not in self.seeds:
            raise ValueError(f"seed: got {seed!r}; allowed: {', '.join(map(str, self.seeds))} ({self.job_dir})")
        return int(setting), self.seeds.index(seed)

    def network(self) -> Any:
        from purerl.rl.agent import build_env_and_network

        return build_env_and_network(self.config)[2]

    def policy(self, setting: int, seed: int) -> Policy:
        import jax

        s, k = self.index(setting, seed)
        pick = lambda x: x[s, k]  # noqa: E731
        stats = None if self.obs_stats is None else jax.tree.map(pick, self.obs_stats)
        return Policy(
            network=self.network(),
            params=jax.tree.map(pick, self.params),
            obs_stats=stats,
            config=self.config,
            algo=self.algo,
            setting=self.settings[s],
            seed=int(seed),
        )


def load_policies(job_dir: str | os.PathLike) -> SavedPolicies:
    """All saved policies of a job. Raises PoliciesNotFound when `job_dir/policies/` is
    missing or incomplete, and ValueError when they belong to another run of the job."""
    from purerl import results
    from purerl.algos import get_algorithm
    from purerl.rl.normalization import RunningStats

    job_dir = Path(job_dir).resolve()
    directory = job_dir / POLICIES
    try:
        index = json.loads((directory / INDEX).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        raise PoliciesNotFound(
            f"{job_dir}: no complete saved policies ({POLICIES}/{INDEX} missing); train the job "
            "with save_policies=true (or force=true to redo a finished job)"
        ) from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{directory}: format {index.get('format')!r}; allowed: {FORMAT}")
    status = results.read_status(job_dir)
    if status is not None and index.get("fingerprint") and status.get("fingerprint") != index["fingerprint"]:
        raise ValueError(
            f"{job_dir}: the saved policies come from another run of this job (fingerprint "
            f"{index['fingerprint']}, job.json has {status.get('fingerprint')}); retrain it"
        )
    module = get_algorithm(index["algo"])
    config = module.Config(**{k: _tuples(v) for k, v in index["config"].items()})
    try:
        with orbax_io.checkpointer() as checkpointer, orbax_io.orbax_path(directory / STATE) as state_path:
            tree = checkpointer.restore(state_path)
    except (FileNotFoundError, ValueError) as e:
        raise PoliciesNotFound(f"{directory}: the checkpoint cannot be read ({e})") from None
    stats = tree.get("obs_stats")
    return SavedPolicies(
        job_dir=job_dir,
        algo=index["algo"],
        config=config,
        settings=index["settings"],
        seeds=[int(s) for s in index["seeds"]],
        params=tree["params"],
        obs_stats=None if stats is None else RunningStats(stats["mean"], stats["var"], stats["count"]),
        fingerprint=index.get("fingerprint"),
    )


def load_policy(job_dir: str | os.PathLike, setting: int = 0, seed: int = 0) -> Policy:
    """The saved policy of run (`setting`, `seed`) of a job, as a callable:
    `policy(obs, key=None, deterministic=True) -> action`.

    `setting` is the index in the job's in-job grid (the `setting` column of its results),
    `seed` the seed value (the `seed` column)."""
    return load_policies(job_dir).policy(setting, seed)


# ---------------------------------------------------------------- acting
@functools.lru_cache(maxsize=16)
def _jitted_act(network: Any) -> Any:
    """One jitted `purerl.rl.evaluation.act` per network (flax modules hash by their
    fields): every policy of a job shares its executables."""
    import jax

    from purerl.rl import evaluation

    return jax.jit(functools.partial(evaluation.act, network), static_argnames="deterministic")


# eq=False: a policy hashes by identity, so `jax.jit(policy)` works; comparing weights is
# not what `==` should do.
@dataclasses.dataclass(eq=False)
class Policy:
    """One saved policy: `policy(obs, key=None, deterministic=True) -> action`.

    `obs` is an observation as purerl's env stack gives it (`envs.make_vec_env`: flat
    float vectors), with any leading batch axes; an image observation as gymnax returns it
    (e.g. Catch's [10, 5]) is flattened. Deterministic: the distribution's mode (argmax for
    discrete actions, the mean for Gaussian ones); otherwise a sample, which needs `key`.
    Works inside jit and vmap."""

    network: Any
    params: Any
    obs_stats: Any
    config: Any
    algo: str
    setting: dict[str, float]
    seed: int

    def __post_init__(self) -> None:
        from purerl.rl import evaluation
        from purerl.rl.agent import observation_shape

        env, env_params = self.config.make_env()
        self.env_observation_shape = tuple(env.observation_space(env_params).shape)
        vec_env, vec_params = evaluation.evaluation_env(self.config, 1)
        self.observation_shape = observation_shape(vec_env, vec_params)
        self._act = _jitted_act(self.network)

    def __repr__(self) -> str:
        import jax

        size = sum(int(np.size(x)) for x in jax.tree.leaves(self.params))
        return (f"Policy({self.algo} on {self.config.env}, setting={self.setting}, seed={self.seed}, "
                f"{size:,} parameters, obs {list(self.observation_shape)}, "
                f"normalised obs: {'yes' if self.obs_stats is not None else 'no'})")

    def __call__(self, obs: Any, key: Any = None, deterministic: bool = True) -> Any:
        import jax
        import jax.numpy as jnp

        obs = jnp.asarray(obs, jnp.float32)
        raw = self.env_observation_shape
        if raw != self.observation_shape and len(raw) > 1 and obs.shape[obs.ndim - len(raw):] == raw:
            obs = obs.reshape(obs.shape[: obs.ndim - len(raw)] + self.observation_shape)
        if obs.shape[obs.ndim - len(self.observation_shape):] != self.observation_shape:
            raise ValueError(
                f"obs: got shape {obs.shape}; allowed: [..., {', '.join(map(str, self.observation_shape))}]"
                f" ({self.config.env})"
            )
        if not deterministic and key is None:
            raise ValueError("key: got None; allowed: a PRNG key (deterministic=False samples an action)")
        return self._act(self.params, self.obs_stats, obs, jax.random.PRNGKey(0) if key is None else key,
                         deterministic=bool(deterministic))


__all__ = [
    "INDEX",
    "POLICIES",
    "Policy",
    "PoliciesNotFound",
    "SavedPolicies",
    "load_policies",
    "load_policy",
    "remove_policies",
    "save_policies",
    "supports",
]
