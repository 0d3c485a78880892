"""Bandit algorithms: ε-greedy, UCB1, KL-UCB, Thompson sampling, LinUCB, with exact regret.

One run draws ONE bandit instance (`purerl.bandit_envs`) and pulls it `total_timesteps`
times; an update is a block of `num_steps` pulls, and metrics are reported per block.
Regret is pseudo-regret against the best arm, from the env's own parameters:
    R_T = Σ_t (max_a μ_a(x_t) − μ_{a_t}(x_t)),
so it is exact, not an estimate from noisy rewards. The strategy is static (`Config`);
its knobs (ε, its decay, the UCB constant, priors, LinUCB's α) are traced `Hyper`
fields, so e.g. a grid over `ucb_c` × seeds is one vmapped program (`purerl.sweep.run`).

Strategies (K arms, n_a pulls of arm a, μ̂_a their mean reward, t pulls so far):
- `epsilon_greedy`: with probability ε_t = ε / (1 + epsilon_decay · t) a uniformly random
  arm, else the greedy one (ties broken at random). epsilon_decay = 0 is fixed ε, whose
  regret grows linearly. A 1/t decay has no logarithmic guarantee by itself: with a constant
  too small for the instance's gap, the greedy arm can stay wrong once ε_t is small (regret
  linear again); `epsilon_decreasing` is the schedule with the guarantee.
  On a contextual bandit the greedy arm maximises the ridge estimate θ̂_a·x.
- `epsilon_decreasing`: Auer, Cesa-Bianchi & Fischer 2002's ε_n-greedy, ε_t = min(1, cK/(d²t))
  at pull t = 1, 2, …; with c > 5 and 0 < d ≤ the smallest gap its regret is O(ln T)
  (their Theorem 3). Otherwise as `epsilon_greedy`.
- `ucb1`: argmax μ̂_a + √(c ln t / n_a), untried arms first; c = 2 is Auer et al.'s UCB1.
- `kl_ucb`: Garivier & Cappé 2011's KL-UCB, argmax max{q : n_a KL(μ̂_a, q) ≤ ln t + c ln ln t},
  untried arms first. 0/1 rewards: Bernoulli KL, solved by bisection on [μ̂_a, 1]; other
  rewards: Gaussian KL with known σ = noise_std, KL = (q − μ̂)²/2σ², whose index is the
  closed form μ̂_a + σ √(2 (ln t + c ln ln t) / n_a) (UCB with the variance-correct constant).
  Both attain the Lai–Robbins constant asymptotically (c = 3 in the proof; c = 0 in practice).
- `thompson_beta`: Beta(α₀ + successes, β₀ + failures) posterior per arm (0/1 rewards
  only: BernoulliBandit-misc, KArmedBernoulliBandit); pull the argmax of one posterior sample.
- `thompson_gaussian`: Gaussian prior N(0, prior_std²) on each mean, known reward noise
  noise_std: posterior precision 1/prior_std² + n_a/noise_std², mean Σr/noise_std² / precision.
- `linucb` (contextual only): per-arm ridge regression A_a = λI + Σ x xᵀ, b_a = Σ r x,
  θ̂_a = A_a⁻¹ b_a; pull argmax θ̂_a·x + α √(xᵀ A_a⁻¹ x) (Li et al. 2010, disjoint model).
  A_a⁻¹ is kept directly and updated by Sherman–Morrison (no solve per step).

Metrics per block: `regret` (cumulative, at the end of the block), `block_regret`,
`optimal_arm_fraction`, `epsilon` (ε_t at the block's end; ε-greedy strategies only, else 0),
`env_steps_in_update` (pulls; `purerl.sweep.run` adds the cumulative `env_steps`), and
`episode_return` = total reward of the block (the block counts as one "episode" of
`num_steps` pulls). The headline metric (`RETURN_METRIC`) is `regret`, lower is better
(`RETURN_LOWER_IS_BETTER`): `purerl-train`'s final_return is the cumulative regret averaged
over the last 10% of blocks, and tables count a diverged run as +inf regret.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from purerl import bandit_envs
from purerl.config import ValidatedHyper, _freeze, _integral, check_choice, check_positive_int, hyper_field
from purerl.rl.loop import OnUpdate, TrainFn, run_updates

STRATEGIES = ("epsilon_greedy", "epsilon_decreasing", "ucb1", "kl_ucb", "thompson_beta", "thompson_gaussian",
              "linucb")
CONTEXT_FREE = ("ucb1", "kl_ucb", "thompson_beta", "thompson_gaussian")
EPSILON_STRATEGIES = ("epsilon_greedy", "epsilon_decreasing")
KL_UCB_BISECTIONS = 30  # halves [μ̂, 1] below float32 resolution


# The headline per-update metric (purerl.algos.return_metric): cumulative regret, lower is better.
RETURN_METRIC = "regret"
RETURN_LOWER_IS_BETTER = True

@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: changing one recompiles."""

    env: str = "BernoulliBandit-misc"
    env_kwargs: tuple = ()  # constructor arguments (LinearContextualBandit: num_arms, context_dim)
    env_params: tuple = ()  # overrides of the env's EnvParams, e.g. {"reward_prob": 0.4}
    strategy: str = "ucb1"
    total_timesteps: int = 10_000  # pulls per run
    num_steps: int = 100  # pulls per update (one row of metrics)

    def __post_init__(self) -> None:
        for name in ("env_kwargs", "env_params"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        object.__setattr__(self, "total_timesteps", _integral(self.total_timesteps))
        check_choice("Config", "env", self.env, bandit_envs.BANDIT_ENVS)
        check_choice("Config", "strategy", self.strategy, STRATEGIES)
        for name in ("total_timesteps", "num_steps"):
            check_positive_int("Config", name, getattr(self, name))
        if self.total_timesteps < self.num_steps:
            raise ValueError(
                f"Config.total_timesteps: got {self.total_timesteps}; allowed: at least num_steps = "
                f"{self.num_steps} (one block)"
            )
        contextual = bandit_envs.is_contextual(self.env)
        if contextual and self.strategy in CONTEXT_FREE:
            raise ValueError(
                f"Config.strategy: {self.strategy!r} ignores the context of {self.env}; allowed there: "
                "'linucb', 'epsilon_greedy', 'epsilon_decreasing' (greedy on ridge estimates)"
            )
        if not contextual and self.strategy == "linucb":
            raise ValueError(
                f"Config.strategy: 'linucb' needs a contextual bandit, but {self.env} has none; allowed "
                f"there: {', '.join(repr(s) for s in STRATEGIES if s != 'linucb')}"
            )
        if self.strategy == "thompson_beta" and self.env not in bandit_envs.BERNOULLI_BANDITS:
            raise ValueError(
                f"Config.strategy: 'thompson_beta' needs 0/1 rewards ({', '.join(bandit_envs.BERNOULLI_BANDITS)}), "
                f"but env is {self.env}; allowed there: 'thompson_gaussian', 'kl_ucb', 'ucb1', 'epsilon_greedy', "
                "'epsilon_decreasing'"
            )
        try:
            bandit_envs.make(self.env, dict(self.env_kwargs), dict(self.env_params))
        except ValueError as error:
            raise ValueError(f"Config.{error}") from None

    @property
    def batch_size(self) -> int:
        return self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.num_steps


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced knobs; each strategy reads only its own."""

    epsilon: float = hyper_field(0.1, "[0, 1]", "ε-greedy: exploration probability (at t = 0)")
    epsilon_decay: float = hyper_field(0.0, "[0, inf)", "ε-greedy: ε_t = ε / (1 + epsilon_decay · t); 0 = fixed")
    epsilon_c: float = hyper_field(5.0, "(0, inf)", "ε_n-greedy: c of ε_t = min(1, cK/(d²t)); c > 5 is guaranteed")
    epsilon_d: float = hyper_field(0.1, "(0, inf)", "ε_n-greedy: d of ε_t = min(1, cK/(d²t)); ≤ the smallest gap")
    ucb_c: float = hyper_field(2.0, "[0, inf)", "UCB1: index μ̂ + √(c ln t / n)")
    klucb_c: float = hyper_field(0.0, "[0, inf)", "KL-UCB: exploration level ln t + c ln ln t")
    prior_alpha: float = hyper_field(1.0, "(0, inf)", "Beta Thompson: prior successes α₀")
    prior_beta: float = hyper_field(1.0, "(0, inf)", "Beta Thompson: prior failures β₀")
    prior_std: float = hyper_field(1.0, "(0, inf)", "Gaussian Thompson: prior std of each arm mean (prior mean 0)")
    noise_std: float = hyper_field(1.0, "(0, inf)", "Gaussian Thompson and KL-UCB: assumed reward noise std")
    linucb_alpha: float = hyper_field(1.0, "[0, inf)", "LinUCB: confidence width α")
    ridge: float = hyper_field(1.0, "(0, inf)", "LinUCB / contextual ε-greedy: ridge λ")


@struct.dataclass
class Learner:
    """Sufficient statistics. Contextual bandits also keep A_a⁻¹ [K, d, d] and b_a [K, d]."""

    counts: jax.Array  # [K]
    reward_sums: jax.Array  # [K]
    design_inv: jax.Array | None = None
    xr_sums: jax.Array | None = None


@struct.dataclass
class TrainState:
    learner: Learner
    env_state: Any
    obs: jax.Array  # the context shown before the next pull
    pulls: jax.Array  # t: pulls so far
    regret: jax.Array  # cumulative pseudo-regret


def _argmax_random_ties(key: jax.Array, values: jax.Array) -> jax.Array:
    """argmax with ties broken uniformly at random (greedy on equal estimates must not
    always favour arm 0, which would bias regret by arm order)."""
    is_max = values >= jnp.max(values)
    return jnp.argmax(jnp.where(is_max, jax.random.uniform(key, values.shape, minval=0.5), 0.0))


def epsilon_at(hyper: Hyper, pulls: jax.Array) -> jax.Array:
    """`epsilon_greedy`'s ε_t = ε / (1 + epsilon_decay · t), t = pulls so far."""
    return hyper.epsilon / (1.0 + hyper.epsilon_decay * pulls.astype(jnp.float32))


def decreasing_epsilon(c: jax.Array, d: jax.Array, num_arms: int, pulls: jax.Array) -> jax.Array:
    """`epsilon_decreasing`'s ε_t = min(1, cK/(d²t)) for the pull t = pulls + 1 (Auer et al.
    count pulls from 1)."""
    t = pulls.astype(jnp.float32) + 1.0
    return jnp.minimum(1.0, c * num_arms / (jnp.square(d) * t))


def exploration_level(pulls: jax.Array, c: jax.Array) -> jax.Array:
    """KL-UCB's ln t + c ln ln t at t = max(pulls, 1); ln ln t taken as 0 while ln t < 1."""
    log_t = jnp.log(jnp.maximum(pulls, 1).astype(jnp.float32))
    return log_t + c * jnp.log(jnp.maximum(log_t, 1.0))


def bernoulli_kl(p: jax.Array, q: jax.Array) -> jax.Array:
    """KL(Bernoulli(p) ‖ Bernoulli(q)) with 0 log 0 = 0 and q kept inside (0, 1)."""
    q = jnp.clip(q, 1e-7, 1.0 - 1e-7)
    first = jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30) / q), 0.0)
    second = jnp.where(p < 1, (1 - p) * jnp.log(jnp.maximum(1 - p, 1e-30) / (1 - q)), 0.0)
    return first + second


def kl_ucb_bernoulli(mean: jax.Array, counts: jax.Array, level: jax.Array) -> jax.Array:
    """[K] max{q ∈ [μ̂, 1] : n KL(μ̂, q) ≤ level} by bisection (KL(μ̂, ·) increases on [μ̂, 1]);
    arms with n = 0 get 1."""
    budget = level / jnp.maximum(counts, 1.0)

    def halve(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        inside = bernoulli_kl(mean, middle) <= budget
        return jnp.where(inside, middle, low), jnp.where(inside, high, middle)

    low, _ = lax.fori_loop(0, KL_UCB_BISECTIONS, halve, (mean, jnp.ones_like(mean)))
    return jnp.where(counts > 0, low, 1.0)


def kl_ucb_gaussian(mean: jax.Array, counts: jax.Array, level: jax.Array, noise_std: jax.Array) -> jax.Array:
    """[K] μ̂ + σ √(2 level / n), the KL-UCB index for Gaussian rewards with known σ."""
    return mean + noise_std * jnp.sqrt(2.0 * level / jnp.maximum(counts, 1.0))


def sherman_morrison(inverse: jax.Array, x: jax.Array) -> jax.Array:
    """(A + x xᵀ)⁻¹ from A⁻¹ (A symmetric positive definite, [..., d, d])."""
    inverse_x = jnp.sum(inverse * x, axis=-1)  # tiny d: elementwise products fuse, dots do not
    denominator = 1.0 + jnp.sum(inverse_x * x, axis=-1)
    return inverse - inverse_x[..., :, None] * inverse_x[..., None, :] / denominator[..., None, None]


def linucb_scores(design_inv: jax.Array, xr_sums: jax.Array, x: jax.Array, alpha: jax.Array) -> jax.Array:
    """[K] LinUCB indices θ̂_a·x + α √(xᵀ A_a⁻¹ x) with θ̂_a = A_a⁻¹ b_a (A⁻¹ symmetric,
    so θ̂_a·x = b_a·(A_a⁻¹ x))."""
    inverse_x = jnp.sum(design_inv * x, axis=-1)  # [K, d]
    width = jnp.sqrt(jnp.maximum(jnp.sum(inverse_x * x, axis=-1), 0.0))
    return jnp.sum(xr_sums * inverse_x, axis=-1) + alpha * width


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """Build `train(key, hyper) -> (final_state, metrics)`, metrics per block of pulls."""
    env, env_params = bandit_envs.make(config.env, dict(config.env_kwargs), dict(config.env_params))
    num_arms = bandit_envs.num_arms(env, env_params)
    contextual = bandit_envs.is_contextual(config.env)
    bernoulli = config.env in bandit_envs.BERNOULLI_BANDITS

    def epsilon(hyper: Hyper, pulls: jax.Array) -> jax.Array:
        if config.strategy == "epsilon_decreasing":
            return decreasing_epsilon(hyper.epsilon_c, hyper.epsilon_d, num_arms, pulls)
        return epsilon_at(hyper, pulls)

    def init_learner(hyper: Hyper, context_dim: int) -> Learner:
        zeros = jnp.zeros(num_arms, jnp.float32)
        if not contextual:
            return Learner(zeros, zeros)
        eye = jnp.eye(context_dim, dtype=jnp.float32) / hyper.ridge
        return Learner(
            zeros, zeros, jnp.tile(eye, (num_arms, 1, 1)), jnp.zeros((num_arms, context_dim), jnp.float32)
        )

    def choose(learner: Learner, x: jax.Array, pulls: jax.Array, key: jax.Array, hyper: Hyper) -> jax.Array:
        tie_key, explore_key, arm_key = jax.random.split(key, 3)
        n = learner.counts
        mean = learner.reward_sums / jnp.maximum(n, 1.0)
        if config.strategy in EPSILON_STRATEGIES:
            if contextual:
                estimates = linucb_scores(learner.design_inv, learner.xr_sums, x, 0.0)
            else:
                estimates = mean
            greedy = _argmax_random_ties(tie_key, estimates)
            explore = jax.random.uniform(explore_key) < epsilon(hyper, pulls)
            return jnp.where(explore, jax.random.randint(arm_key, (), 0, num_arms), greedy)
        if config.strategy == "ucb1":
            log_t = jnp.log(jnp.maximum(pulls, 1).astype(jnp.float32))
            bonus = jnp.sqrt(hyper.ucb_c * log_t / jnp.maximum(n, 1.0))
            scores = jnp.where(n > 0, mean + bonus, jnp.inf)
        elif config.strategy == "kl_ucb":
            level = exploration_level(pulls, hyper.klucb_c)
            if bernoulli:
                index = kl_ucb_bernoulli(mean, n, level)
            else:
                index = kl_ucb_gaussian(mean, n, level, hyper.noise_std)
            scores = jnp.where(n > 0, index, jnp.inf)
        elif config.strategy == "thompson_beta":
            scores = jax.random.beta(
                arm_key, hyper.prior_alpha + learner.reward_sums, hyper.prior_beta + n - learner.reward_sums
            )
        elif config.strategy == "thompson_gaussian":
            noise_var = jnp.square(hyper.noise_std)
            posterior_var = 1.0 / (1.0 / jnp.square(hyper.prior_std) + n / noise_var)
            posterior_mean = posterior_var * learner.reward_sums / noise_var
            scores = posterior_mean + jnp.sqrt(posterior_var) * jax.random.normal(arm_key, (num_arms,))
        else:  # linucb
            scores = linucb_scores(learner.design_inv, learner.xr_sums, x, hyper.linucb_alpha)
        return _argmax_random_ties(tie_key, scores)

    def learn(learner: Learner, x: jax.Array, action: jax.Array, reward: jax.Array) -> Learner:
        learner = learner.replace(
            counts=learner.counts.at[action].add(1.0),
            reward_sums=learner.reward_sums.at[action].add(reward),
        )
        if contextual:  # every arm's update computed, the pulled arm's kept: no scatter under vmap
            pulled = jnp.arange(num_arms) == action
            learner = learner.replace(
                design_inv=jnp.where(
                    pulled[:, None, None], sherman_morrison(learner.design_inv, x), learner.design_inv
                ),
                xr_sums=learner.xr_sums + pulled[:, None] * reward * x,
            )
        return learner

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        reset_key, key = jax.random.split(key)
        obs, env_state = env.reset_env(reset_key, env_params)
        obs = jnp.asarray(obs, jnp.float32)
        state = TrainState(
            init_learner(hyper, obs.shape[-1]), env_state, obs, jnp.int32(0), jnp.float32(0.0)
        )

        def pull(state: TrainState, key: jax.Array):
            choose_key, env_key = jax.random.split(key)
            action = choose(state.learner, state.obs, state.pulls, choose_key, hyper)
            means = bandit_envs.arm_means(env, state.env_state)  # before stepping: x_t's means
            obs, env_state, reward, _, _ = env.step_env(env_key, state.env_state, action, env_params)
            # gymnax bandits keep Python scalars in the reset state; match dtypes for the scan carry.
            env_state = jax.tree.map(
                lambda new, old: jnp.asarray(new, jnp.result_type(old)), env_state, state.env_state
            )
            reward = jnp.asarray(reward, jnp.float32)
            gap = jnp.max(means) - means[action]
            state = TrainState(
                learn(state.learner, state.obs, action, reward),
                env_state,
                jnp.asarray(obs, jnp.float32),
                state.pulls + 1,
                state.regret + gap,
            )
            return state, (reward, gap, (gap <= 0.0).astype(jnp.float32))

        def block(state: TrainState, key: jax.Array, update_index: jax.Array):
            state, (rewards, gaps, optimal) = lax.scan(pull, state, jax.random.split(key, config.num_steps))
            metrics = {
                "env_steps_in_update": jnp.int32(config.num_steps),
                "regret": state.regret,
                "block_regret": jnp.sum(gaps),
                "optimal_arm_fraction": jnp.mean(optimal),
                "epsilon": epsilon(hyper, state.pulls) if config.strategy in EPSILON_STRATEGIES else jnp.float32(0),
                "episode_return": jnp.sum(rewards),
                "episode_length": jnp.float32(config.num_steps),
                "episodes": jnp.int32(1),
            }
            return state, metrics

        return run_updates(block, state, key, config.num_updates, hyper, on_update)

    return train
