"""Trained policies as artifacts: save the final parameters and observation statistics of
every run of a job, load one back as a callable policy, and evaluate saved policies.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

POLICIES = "policies"
INDEX = "index.json"
STATE = "state"
FORMAT = 1
_TMP_PREFIX = f".{POLICIES}.tmp-"
_OLD_PREFIX = f".{POLICIES}.old-"


class PoliciesNotFound(FileNotFoundError):
    """The directory holds no complete saved policies."""


# ---------------------------------------------------------------- orbax
@contextlib.contextmanager
def _orbax_path(path: Path) -> Iterator[Path]:
    """`path`, or a link to it without glob characters. orbax 0.12.8 finds the per-process
    parts of a checkpoint with `directory.glob(...)`; in a folder named like a grid job
    (`grid.lr=[0.001,0.01]`) that finds nothing, so the parts are never merged and the
    checkpoint cannot be read. Saving (and reading) through a plain-named link avoids it."""
    if not any(c in str(path) for c in "*?["):
        yield path
        return
    link_dir = Path(tempfile.mkdtemp(prefix="purerl-orbax-"))
    try:
        (link_dir / "link").symlink_to(path.parent, target_is_directory=True)
        yield link_dir / "link" / path.name
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)  # removes the link, not its target


@contextlib.contextmanager
def _checkpointer() -> Iterator[Any]:
    """orbax's StandardCheckpointer, its INFO logs (a dozen lines per save) kept out of the
    job's log."""
    import jax
    import orbax.checkpoint as ocp

    options = {}
    if jax.process_count() > 1:
        # Under jax.distributed one process writes the (host, already gathered) policies;
        # orbax would otherwise wait at barriers for processes that never save.
        me = jax.process_index()
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(max(level, logging.WARNING))
    try:
        with ocp.StandardCheckpointer(**options) as checkpointer:
            yield checkpointer
    finally:
        absl.setLevel(level)


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
        with _checkpointer() as checkpointer, _orbax_path(tmp / STATE) as state_path:
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
        with _checkpointer() as checkpointer, _orbax_path(directory / STATE) as state_path:
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
def act(network: Any, params: Any, obs_stats: Any, obs: Any, key: Any, deterministic: Any) -> Any:
    """The action of the policy network for raw observations (`purerl.rl.evaluation.act`)."""
    from purerl.rl import evaluation

    return evaluation.act(network, params, obs_stats, obs, key, deterministic)


@functools.lru_cache(maxsize=16)
def _jitted_act(network: Any) -> Any:
    """One jitted `act` per network (flax modules hash by their fields): every policy of a
    job shares its executables."""
    import jax

    return jax.jit(functools.partial(act, network), static_argnames="deterministic")


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
        from purerl.rl.agent import observation_shape

        env, env_params = self.config.make_env()
        self.env_observation_shape = tuple(env.observation_space(env_params).shape)
        vec_env, vec_params, _ = _env_stack(self.config, 1)
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


# ---------------------------------------------------------------- evaluation
def _env_stack(config: Any, num_envs: int) -> tuple[Any, Any, Any]:
    from purerl.rl.agent import build_env_and_network

    # Not `dataclasses.replace(config, num_envs=...)`: that would validate the evaluation's
    # episode count against the training budget (num_envs × num_steps ≤ total_timesteps).
    return build_env_and_network(config, num_envs=num_envs)


def episode_limit(config: Any) -> int:
    """The env's time limit (steps after which gymnax truncates an episode)."""
    from purerl.rl import evaluation

    return evaluation.episode_limit(config)


MODES = ("deterministic", "stochastic")


@functools.lru_cache(maxsize=8)
def _evaluation_program(config: Any, episodes: int, max_steps: int) -> Any:
    """jit(program(deterministic [M], params [P, ...], obs_stats [P, ...], key)) ->
    (returns, finished) [M, P, episodes]; cached per Config, so jobs alike share it."""
    import jax

    from purerl.rl import evaluation
    from purerl.rl.agent import build_env_and_network

    env, env_params = evaluation.evaluation_env(config, episodes)
    network = build_env_and_network(config)[2]
    run_episodes = evaluation.make_episode_runner(env, env_params, network, episodes, max_steps)
    over_policies = jax.vmap(run_episodes, in_axes=(None, 0, 0, None))
    return jax.jit(jax.vmap(over_policies, in_axes=(0, None, None, None)))


def _check_counts(episodes: Any, max_steps: Any) -> None:
    for name, value in (("episodes", episodes), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: got {value!r}; allowed: a positive integer")


def evaluate(
    saved: SavedPolicies, episodes: int, key: Any, max_steps: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns of the first episode of `episodes` envs, for every saved policy, acting
    deterministically and stochastically.

    One compiled program, vmapped over mode × policy × `episodes` envs, with `lax.scan`
    over `max_steps` (default: the env's time limit, by which every episode has ended).
    Every policy and both modes meet the same env randomness (same key), so differences
    are the policies'. Returns {mode: (returns [S, K, episodes], finished [S, K, episodes])}."""
    import jax
    import jax.numpy as jnp

    max_steps = episode_limit(saved.config) if max_steps is None else max_steps
    _check_counts(episodes, max_steps)
    num_settings, num_seeds = len(saved.settings), len(saved.seeds)
    flat = lambda x: x.reshape((num_settings * num_seeds,) + x.shape[2:])  # noqa: E731
    params = jax.tree.map(flat, saved.params)
    stats = None if saved.obs_stats is None else jax.tree.map(flat, saved.obs_stats)
    deterministic = jnp.asarray([mode == "deterministic" for mode in MODES])
    program = _evaluation_program(saved.config, int(episodes), int(max_steps))
    returns, finished = jax.device_get(program(deterministic, params, stats, key))
    shape = (num_settings, num_seeds, episodes)
    return {
        mode: (np.asarray(returns[m]).reshape(shape), np.asarray(finished[m]).reshape(shape))
        for m, mode in enumerate(MODES)
    }


def evaluation_table(
    saved: SavedPolicies, episodes: int = 10, seed: int = 0, max_steps: int | None = None
) -> Any:
    """pandas DataFrame, one row per setting × seed × mode (deterministic, stochastic):
    setting, seed, mode, mean_return, std_return (over episodes), episodes (finished
    within max_steps), then the env, the algorithm and the setting's grid values."""
    import jax
    import pandas as pd

    outcomes = evaluate(saved, episodes, jax.random.PRNGKey(seed), max_steps)
    rows = []
    for s, setting in enumerate(saved.settings):
        for k, run_seed in enumerate(saved.seeds):
            for mode in MODES:
                returns, finished = outcomes[mode]
                done = returns[s, k][finished[s, k]].astype(np.float64)
                rows.append(
                    {
                        "setting": s,
                        "seed": run_seed,
                        "mode": mode,
                        "mean_return": float(done.mean()) if done.size else float("nan"),
                        "std_return": float(done.std()) if done.size else float("nan"),
                        "episodes": int(done.size),
                        "env": saved.config.env,
                        "algo": saved.algo,
                        **setting,
                    }
                )
    return pd.DataFrame(rows)


def _with_successor_states(vec_env: Any) -> Any:
    """The env stack with its gymnax env wrapped so that every step also reports the
    successor state before gymnax's auto-reset (`info["next_state"]`): the last frame of a
    rendered episode is then its real end, not the next episode's start."""
    import jax

    from purerl.envs import Wrapper

    class SuccessorState(Wrapper):
        def step(self, key, state, action, params=None):
            params = self.default_params if params is None else params
            # gymnax's step: key_step, key_reset = split(key); the successor is step_env's.
            _, successor, *_ = self._env.step_env(jax.random.split(key)[0], state, action, params)
            obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
            return obs, state, reward, terminated, truncated, {**info, "next_state": successor}

    innermost = vec_env
    while isinstance(innermost._env, Wrapper):
        innermost = innermost._env
    innermost._env = SuccessorState(innermost._env)
    return vec_env


@functools.lru_cache(maxsize=8)
def _episode_program(config: Any, max_steps: int) -> Any:
    """jit(program(deterministic, params, obs_stats, key)) -> one env's trajectory:
    (first gymnax state, gymnax state after each step, episode_done, reward), [max_steps]."""
    import jax

    env, env_params, network = _env_stack(config, 1)
    env = _with_successor_states(env)

    def rollout(deterministic, params, obs_stats, key):
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def step(carry, step_key):
            obs, state = carry
            act_key, env_key = jax.random.split(step_key)
            action = act(network, params, obs_stats, obs, act_key, deterministic)
            next_obs, next_state, reward, _, _, info = env.step(env_key, state, action, env_params)
            return (next_obs, next_state), (info["next_state"], info["episode_done"][0], reward[0])

        _, trajectory = jax.lax.scan(step, (obs, state), jax.random.split(steps_key, max_steps))
        return (state.env_state, *trajectory)

    return jax.jit(rollout)


def record_episode(
    saved: SavedPolicies, setting: int, seed: int, key: Any, deterministic: bool = True, max_steps: int | None = None
) -> tuple[list[Any], np.ndarray]:
    """One episode of one saved policy, for rendering: (the gymnax env states s_0 .. s_T
    of an episode of T steps, as a list; the return collected up to each of them)."""
    import jax

    policy = saved.policy(setting, seed)
    max_steps = episode_limit(saved.config) if max_steps is None else max_steps
    _check_counts(1, max_steps)
    program = _episode_program(saved.config, int(max_steps))
    first, successors, done, rewards = jax.device_get(
        program(bool(deterministic), policy.params, policy.obs_stats, key)
    )
    length = int(np.argmax(done)) + 1 if done.any() else max_steps
    # Leaves are [1] (VecEnv of one env) and [max_steps, 1].
    frames = [jax.tree.map(lambda x: x[0], first)]
    frames += [jax.tree.map(lambda x, t=t: x[t, 0], successors) for t in range(length)]
    return frames, np.concatenate([[0.0], np.cumsum(rewards[:length], dtype=np.float64)])


__all__ = [
    "MODES",
    "Policy",
    "PoliciesNotFound",
    "SavedPolicies",
    "act",
    "evaluate",
    "evaluation_table",
    "load_policies",
    "load_policy",
    "record_episode",
    "remove_policies",
    "supports",
    "save_policies",
]
