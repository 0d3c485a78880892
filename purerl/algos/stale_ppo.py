"""PPO on stale data, with a selectable off-policy correction. A variant of purerl.algos.ppo with
the same interface (Config, Hyper, make_train), so `purerl.sweep` vmaps it and
`purerl-train algo=stale_ppo` trains it.

Two kinds of staleness, both traced, so one compiled program covers a whole grid of them:

- `Hyper.staleness` = k ≤ `Config.max_staleness`: the behaviour policy lags the learner by k
  updates — update u's rollout is collected with the parameters θ_{u−k} (θ_0 while u < k), as an
  asynchronous actor that syncs its weights k updates late would. The critic used for the
  rollout's values is the learner's own (θ_u); observation statistics are shared (the learner's).
- `Hyper.stale_rollouts` = K ≤ `Config.max_stale`: the batch is the fresh rollout plus the K most
  recent older rollouts. The buffer always holds `max_stale` older rollouts (stored with what was
  computed when they were collected: behaviour log-probs, critic values, GAE advantages and
  λ-returns, and the rewards, flags and next observations a correction needs); rollouts older
  than K, and slots not filled yet, are masked out of every loss and diagnostic. Each update runs
  the same number of SGD steps (epochs × minibatches over the fresh + buffered batch), so a
  larger K means larger effective minibatches, not more steps.

`Hyper.correction` picks the off-policy correction (`purerl.rl.off_policy_corrections`, codes
0 none, 1 truncated_is, 2 vtrace, 3 decoupled), also traced. `none` is PPO as if the data were
fresh: each rollout's advantages and targets as computed when it was collected, and the clipped
surrogate's ratio picked by `Hyper.naive_ratio` (0 or 1): 0 — π_θ / μ with μ the behaviour policy
that collected the sample (stored log-prob); 1 — π_θ / π_start with π_start the policy at the
start of this update (recomputed), the naive choice that ignores how stale the sample is. The
other corrections recompute, at the start of each update, every rollout's advantages and critic
targets from the learner's current critic V_start and the ratios ρ = π_start / μ (clipped at
`Hyper.rho_bar`, V-trace's traces at `Hyper.c_bar`), and take the surrogate's ratio against
π_start. With k = 0 and K = 0 (and ρ̄, c̄ ≥ 1) every correction is PPO's synchronous update, to
float rounding (tests/test_stale_ppo.py).

Diagnostics per update, over the valid samples at the start of the update (before any SGD step);
"off-policy" samples are those of older rollouts (age > 0) and, when k > 0, the fresh ones too:
`behaviour_kl` — KL(μ ‖ π_start) over the off-policy samples (k3 estimator (ρ − 1) − log ρ; 0
when there are none); `ratio_p05`, `ratio_p95` — the 5th and 95th percentile of ρ over the
off-policy samples (1 when there are none); `stale_samples` — how many there are;
`rho_truncated_frac` — share of valid samples with ρ > ρ̄; `zero_gradient_frac` — share of all
valid samples whose clipped-surrogate gradient is zero already (the loss's starting ratio is
outside [1 − ε, 1 + ε] on the side the advantage pushes towards); `clip_frac_first_epoch` — PPO's
clip fraction over the first epoch; `behaviour_lag` — the k used (k is capped at max_staleness).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purerl.algos import ppo
from purerl.config import hyper_field
from purerl.nets import ActorCritic
from purerl.rl import advantages as adv
from purerl.rl import losses, on_policy
from purerl.rl import off_policy_corrections as opc
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import Transition, evaluate_values, flatten_time, make_value_fn
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

RETURN_METRIC = ppo.RETURN_METRIC
CORRECTIONS = opc.CORRECTIONS
correction_code = opc.correction_code


def _check_nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Config.{name}: got {value!r}; allowed: a non-negative integer")


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
    """PPO's static settings plus the capacities of the rollout buffer and of the parameter history."""

    max_stale: int = 8  # older rollouts kept (Hyper.stale_rollouts ≤ this)
    max_staleness: int = 4  # older parameter sets kept for the lagging actor (Hyper.staleness ≤ this)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative_int("max_stale", self.max_stale)
        _check_nonnegative_int("max_staleness", self.max_staleness)
        if self.advantage != "gae":
            raise ValueError(f"Config.advantage: got {self.advantage!r}; allowed: 'gae' (stale PPO keeps a critic)")


@struct.dataclass
class Hyper(ppo.Hyper):
    stale_rollouts: float = hyper_field(0.0, "[0, inf)", "K: older rollouts in each batch (≤ Config.max_stale)")
    naive_ratio: float = hyper_field(0.0, "[0, 1]", "correction none: 1 ratio against π at the update's start; "
                                     "0 against the behaviour π")
    staleness: float = hyper_field(0.0, "[0, inf)", "k: updates the behaviour policy lags the learner "
                                   "(≤ Config.max_staleness)")
    correction: float = hyper_field(0.0, "[0, 3]", "0 none, 1 truncated_is, 2 vtrace, 3 decoupled")
    rho_bar: float = hyper_field(1.0, "(0, inf)", "ρ̄: truncation of the importance weights π/μ")
    c_bar: float = hyper_field(1.0, "(0, inf)", "c̄: truncation of V-trace's traces")


@struct.dataclass
class Kept:
    """One rollout as the buffer keeps it: the transitions and what was computed when it was collected."""

    transition: Transition  # log_prob: the behaviour policy's
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


@struct.dataclass
class Batch:
    """Per-sample training data of one update, flattened for minibatches."""

    obs: jax.Array
    action: jax.Array
    reference_log_prob: jax.Array  # the surrogate ratio's denominator
    value: jax.Array  # old values for the clipped value loss
    advantage: jax.Array
    target: jax.Array
    weight: jax.Array  # per-sample weight of the clipped surrogate term
    mask: jax.Array


@struct.dataclass
class StaleState:
    agent: on_policy.TrainState
    buffer: Kept  # [max_stale, T, N]: index 0 the most recent older rollout
    filled: jax.Array  # rollouts stored so far (capped at max_stale)
    history: Any  # [max_staleness] earlier parameters: index i = θ_{u−1−i} (θ_0 before the start)


def check_hyper(config: Config, hyper: Hyper) -> None:
    """Refuse concrete settings the config cannot serve: a staleness beyond what it keeps, a count
    or a correction code that is not a whole number. Traced values are rounded and capped."""
    choices = ", ".join(f"{i} ({name})" for i, name in enumerate(opc.CORRECTIONS))
    rules = (("staleness", config.max_staleness, "Config.max_staleness"),
             ("stale_rollouts", config.max_stale, "Config.max_stale"),
             ("correction", len(opc.CORRECTIONS) - 1, None))
    for field, cap, cap_name in rules:
        value = getattr(hyper, field)
        if isinstance(value, jax.core.Tracer):
            continue
        values = np.atleast_1d(np.asarray(value, np.float64))
        bad = values[(values > cap) | (values != np.round(values))]
        if bad.size:
            allowed = choices if cap_name is None else f"a whole number, at most {cap_name} = {cap}"
            raise ValueError(f"Hyper.{field}: got {bad[0]:g}; allowed: {allowed}")


class Learner(NamedTuple):
    """Stale PPO's learner, apart from collection: `init(key, hyper)` -> the state before update 0;
    `learn(state, rollout, lag, key, update_index, hyper)` -> (state, metrics) of one update on a
    rollout whose actions a policy `lag` updates old chose (`state.agent` is the learner's, with the
    envs and observation statistics already advanced by that rollout; `rollout` carries the
    learner's critic values). `make_train` collects in the same program; `purerl.rl.async_runner`
    feeds it rollouts from an actor program on another device."""

    network: ActorCritic
    env: Any
    env_params: Any
    init: Callable[[jax.Array, Hyper], StaleState]
    learn: Callable[..., tuple[StaleState, dict[str, jax.Array]]]


def make_learner(config: Config) -> Learner:
    env, env_params, network = build_env_and_network(config)
    steps_per_update = config.update_epochs * config.num_minibatches
    rollouts = config.max_stale + 1

    def optimizer_of(hyper: Hyper):
        lr_schedule = on_policy.learning_rate(hyper.lr, config.anneal_lr, steps_per_update, config.num_updates)
        return lr_schedule, adam_clipped(lr_schedule, hyper.max_grad_norm, eps=hyper.adam_eps)

    def log_prob(params: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        return network.apply(params, obs, method=ActorCritic.policy).log_prob(action)

    def loss_fn(params: Any, mb: Batch, hyper: Hyper):
        dist = network.apply(params, mb.obs, method=ActorCritic.policy)
        advantages = losses.masked_normalize(mb.advantage, mb.mask) if config.normalize_advantages else mb.advantage
        policy_loss, stats = losses.clipped_surrogate(
            dist.log_prob(mb.action), mb.reference_log_prob, advantages, hyper.clip_eps, mb.mask, mb.weight
        )
        entropy = losses.masked_mean(dist.entropy(), mb.mask)
        values = network.apply(params, mb.obs, method=ActorCritic.value)
        old_values = mb.value if config.clip_value_loss else None
        value_loss = losses.value_loss(values, mb.target, old_values, hyper.vf_clip_eps, mb.mask)
        total = policy_loss - hyper.ent_coef * entropy + hyper.vf_coef * value_loss
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, **stats}

    def init(key: jax.Array, hyper: Hyper) -> StaleState:
        _, optimizer = optimizer_of(hyper)
        agent = on_policy.init_state(config, env, env_params, network, optimizer.init, key)
        shape = (config.max_stale, config.num_steps, config.num_envs)
        obs = jnp.zeros(shape + tuple(env.observation_space(env_params).shape))
        action = env.action_space(env_params).sample(jax.random.PRNGKey(0))
        zeros = jnp.zeros(shape)
        empty = Kept(
            Transition(obs=obs, action=jnp.zeros(shape + action.shape, action.dtype), log_prob=zeros, reward=zeros,
                       terminated=zeros.astype(bool), truncated=zeros.astype(bool), next_obs=obs),
            value=zeros, advantage=zeros, target=zeros,
        )
        history = jax.tree.map(lambda p: jnp.broadcast_to(p, (config.max_staleness,) + p.shape), agent.params)
        return StaleState(agent, empty, jnp.int32(0), history)

    def push(newest: jax.Array, stack: jax.Array) -> jax.Array:
        """`newest` in front of a fixed-capacity stack, dropping its oldest entry (if any)."""
        return jnp.concatenate([newest[None], stack])[: stack.shape[0]]

    def learn(state: StaleState, rollout: on_policy.Rollout, lag: jax.Array, key: jax.Array,
              update_index: jax.Array, hyper: Hyper) -> tuple[StaleState, dict[str, jax.Array]]:
        lr_schedule, optimizer = optimizer_of(hyper)
        agent = state.agent

        def sgd_step(carry, mb: Batch):
            params, opt_state, step = gradient_step(optimizer, loss_fn, *carry, mb, hyper)
            return (params, opt_state), {**step.aux, "grad_norm": step.grad_norm}

        advantages, targets = on_policy.gae(rollout, hyper.gamma, hyper.gae_lambda)
        fresh = Kept(rollout.batch, rollout.values, advantages, targets)
        # Batch: the fresh rollout (age 0) and the buffer (ages 1..max_stale); ages beyond K or
        # not filled yet are masked out.
        kept = jax.tree.map(lambda f, b: jnp.concatenate([f[None], b]), fresh, state.buffer)
        age = jnp.arange(rollouts)[:, None, None]
        valid = (age <= hyper.stale_rollouts) & (age <= state.filled)
        mask = jnp.broadcast_to(valid, kept.value.shape).astype(jnp.float32)
        transitions = kept.transition
        off_policy = mask * ((age > 0) | (lag > 0))

        # The current critic on the older rollouts (the fresh one's values are already θ_u's).
        start_values, start_next_values = rollout.values[None], rollout.next_values[None]
        if config.max_stale:
            older = evaluate_values(make_value_fn(network, agent.params), state.buffer.transition)
            start_values = jnp.concatenate([start_values, older[0]])
            start_next_values = jnp.concatenate([start_next_values, older[1]])
        start_log_prob = log_prob(agent.params, transitions.obs, transitions.action)
        # The corrections run along time: [R, T, N] -> [T, R, N] and back.
        time_major = partial(jnp.moveaxis, source=0, destination=1)
        trajectory = adv.Trajectory(*map(time_major, (transitions.reward, start_values, start_next_values,
                                                       transitions.terminated, transitions.truncated)))
        corrected = opc.correct(hyper.correction, time_major(start_log_prob), time_major(transitions.log_prob),
                                trajectory, hyper.gamma, hyper.gae_lambda, hyper.rho_bar, hyper.c_bar)
        corrected = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), corrected)
        # `none` keeps each rollout's advantages and targets from when it was collected.
        uncorrected = jnp.round(hyper.correction) == opc.NONE
        reference = jnp.where(uncorrected & (hyper.naive_ratio <= 0.5), transitions.log_prob, start_log_prob)
        batch = Batch(
            obs=transitions.obs, action=transitions.action, reference_log_prob=reference,
            value=jnp.where(uncorrected, kept.value, start_values),
            advantage=jnp.where(uncorrected, kept.advantage, corrected.advantages),
            target=jnp.where(uncorrected, kept.target, corrected.targets),
            weight=corrected.weights, mask=mask,
        )

        log_r = start_log_prob - transitions.log_prob
        any_off = jnp.sum(off_policy) > 0
        off_ratio = jnp.where(off_policy > 0, jnp.exp(log_r), jnp.nan)
        loss_ratio = jnp.exp(start_log_prob - reference)
        advantage = losses.masked_normalize(batch.advantage, mask)
        pushed_out = ((advantage > 0) & (loss_ratio > 1 + hyper.clip_eps)) | (
            (advantage < 0) & (loss_ratio < 1 - hyper.clip_eps))
        diagnostics = {
            "behaviour_kl": losses.masked_mean(jnp.expm1(log_r) - log_r, off_policy),
            "ratio_p05": jnp.where(any_off, jnp.nanquantile(off_ratio, 0.05), 1.0),
            "ratio_p95": jnp.where(any_off, jnp.nanquantile(off_ratio, 0.95), 1.0),
            "zero_gradient_frac": losses.masked_mean(pushed_out.astype(jnp.float32), mask),
            "rho_truncated_frac": losses.masked_mean((log_r > jnp.log(hyper.rho_bar)).astype(jnp.float32), mask),
            "stale_samples": jnp.sum(off_policy),
            "behaviour_lag": jnp.asarray(lag, jnp.float32),
        }

        (params, opt_state), per_epoch = shuffled_minibatch_epochs(
            key, (agent.params, agent.opt_state), flatten_time(flatten_time(batch)),
            config.update_epochs, config.num_minibatches, sgd_step,
        )
        buffer = jax.tree.map(push, fresh, state.buffer)
        history = jax.tree.map(push, agent.params, state.history)
        metrics = {
            "env_steps_in_update": jnp.int32(config.batch_size),
            **rollout.episodes.metrics(),
            **{name: jnp.mean(values) for name, values in per_epoch.items()},
            "approx_kl": per_epoch["approx_kl"][-1],
            "approx_kl_first_epoch": per_epoch["approx_kl"][0],
            "clip_frac_first_epoch": per_epoch["clip_frac"][0],
            "update_kl": on_policy.policy_kl(network, agent.params, params, rollout.batch.obs),
            **diagnostics,
            "lr": lr_schedule(update_index * steps_per_update),
        }
        agent = agent.replace(params=params, opt_state=opt_state)
        filled = jnp.minimum(state.filled + 1, config.max_stale)
        return StaleState(agent, buffer, filled, history), metrics

    return Learner(network, env, env_params, init, learn)


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    learner = make_learner(config)
    env, env_params, network = learner.env, learner.env_params, learner.network

    def train(key: jax.Array, hyper: Hyper) -> tuple[StaleState, dict[str, jax.Array]]:
        check_hyper(config, hyper)
        init_key, key = jax.random.split(key)
        state = learner.init(init_key, hyper)

        def update_step(state: StaleState, key: jax.Array, update_index: jax.Array):
            rollout_key, epoch_key = jax.random.split(key)
            # The lagging actor: θ_{u−k} from [θ_u, θ_{u−1}, ...] (θ_0 repeated before the start).
            lag = jnp.clip(jnp.round(hyper.staleness), 0, config.max_staleness).astype(jnp.int32)
            behaviour = jax.tree.map(lambda now, old: jnp.concatenate([now[None], old])[lag],
                                     state.agent.params, state.history)
            agent, rollout = on_policy.collect_rollout(env, env_params, network, state.agent, rollout_key,
                                                       config.num_steps, behaviour_params=behaviour)
            return learner.learn(state.replace(agent=agent), rollout, lag, epoch_key, update_index, hyper)

        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
