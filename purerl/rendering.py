"""Episodes of saved policies, drawn: `record_episode` plays one episode of one saved
policy (`purerl.policies`) and returns the env states to draw; `write_gif` draws them with
gymnax's visualizer into a GIF (purerl-eval --gif).

What can be drawn: Catch and MinAtar draw with matplotlib alone; classic control
(CartPole, Acrobot, Pendulum, MountainCar) draws through Gymnasium, which needs pygame
(`pip install 'purerl[render]'`). `check_renderable` raises `RenderUnavailable`, naming the
env and what is missing, before anything runs.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from purerl.policies import SavedPolicies

# Envs whose states gymnax's Visualizer can draw, and what that needs beyond purerl.
CLASSIC_CONTROL = ("Acrobot-v1", "CartPole-v1", "Pendulum-v1", "MountainCar-v0", "MountainCarContinuous-v0")
MATPLOTLIB_ONLY = (
    "Catch-bsuite",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "SpaceInvaders-MinAtar",
    "Pong-misc",
    "PointRobot-misc",
    "MetaMaze-misc",
    "FourRooms-misc",
)


class RenderUnavailable(RuntimeError):
    """The env cannot be drawn here; the message says why and what to install."""


def check_renderable(env_name: str) -> None:
    """Raise RenderUnavailable naming the env and what is missing."""
    if env_name in CLASSIC_CONTROL:
        if importlib.util.find_spec("pygame") is None:
            raise RenderUnavailable(
                f"rendering {env_name} needs pygame (Gymnasium's classic-control renderer), which is "
                "not installed: pip install 'purerl[render]'"
            )
    elif env_name not in MATPLOTLIB_ONLY:
        raise RenderUnavailable(
            f"gymnax has no renderer for {env_name}; renderable: {', '.join(CLASSIC_CONTROL + MATPLOTLIB_ONLY)}"
        )


# ---------------------------------------------------------------- recording
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

    from purerl.rl import evaluation
    from purerl.rl.agent import build_env_and_network

    env, env_params = evaluation.evaluation_env(config, 1)
    env = _with_successor_states(env)
    network = build_env_and_network(config)[2]

    def rollout(deterministic, params, obs_stats, key):
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def step(carry, step_key):
            obs, state = carry
            act_key, env_key = jax.random.split(step_key)
            action = evaluation.act(network, params, obs_stats, obs, act_key, deterministic)
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

    from purerl.rl import evaluation

    policy = saved.policy(setting, seed)
    max_steps = evaluation.episode_limit(saved.config) if max_steps is None else max_steps
    evaluation.check_episode_counts(1, max_steps)
    program = _episode_program(saved.config, int(max_steps))
    first, successors, done, rewards = jax.device_get(
        program(bool(deterministic), policy.params, policy.obs_stats, key)
    )
    length = int(np.argmax(done)) + 1 if done.any() else max_steps
    # Leaves are [1] (VecEnv of one env) and [max_steps, 1].
    frames = [jax.tree.map(lambda x: x[0], first)]
    frames += [jax.tree.map(lambda x, t=t: x[t, 0], successors) for t in range(length)]
    return frames, np.concatenate([[0.0], np.cumsum(rewards[:length], dtype=np.float64)])


# ---------------------------------------------------------------- drawing
def write_gif(saved: SavedPolicies, setting: int, seed: int, path: Path, key_seed: int = 0) -> int:
    """One deterministic episode of run (`setting`, `seed`) of a job's saved policies as a
    GIF at `path` (written atomically); returns its number of frames. Raises
    RenderUnavailable before playing when the env cannot be drawn here. Draws with the
    current matplotlib backend (purerl-eval selects the headless Agg)."""
    import jax

    check_renderable(saved.config.env)
    from gymnax.visualize import Visualizer

    states, returns = record_episode(saved, setting, seed, jax.random.PRNGKey(key_seed))
    env, env_params = saved.config.make_env()
    tmp = path.with_name(f".{path.name}.tmp.gif")  # PillowWriter picks the format from the suffix
    try:
        Visualizer(env, env_params, states, returns).animate(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(states)


__all__ = [
    "CLASSIC_CONTROL",
    "MATPLOTLIB_ONLY",
    "RenderUnavailable",
    "check_renderable",
    "record_episode",
    "write_gif",
]
