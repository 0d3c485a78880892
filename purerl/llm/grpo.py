"""GRPO (Shao et al. 2024): no critic; G completions per prompt and group-relative advantages.

Per update: `num_prompts` fresh prompts, each sampled `group_size` times from the current policy
(one cached generation program). Completion i of a group gets A_i = (R_i − mean_group R) /
(std_group R + ε) (`purerl.rl.group.group_relative_advantages`; `scale_rewards=False` keeps only
the mean baseline, as Dr. GRPO does) on every one of its tokens. Loss, over completion tokens
only:

    clipped surrogate(π/π_old, A)  +  β · KL_k3(π ‖ π_ref)

with per-token ratios (`ratio="token"`) or GSPO's length-normalised sequence ratio
(`ratio="sequence"`: s_i = exp(mean_t log π/π_old), clipped per completion). π_ref is the SFT
policy. With `reward="model"` the reward is a Bradley-Terry reward model trained first.

Metrics per update: env_steps_in_update (completions sampled; the host adds the cumulative
env_steps), accuracy (the headline: mean task reward —
accuracy on addition — of one completion sampled at T per held-out prompt, after the update),
greedy_accuracy, kl_to_ref (mean over those completions of Σ_t k3), sample_reward (mean task
reward of this update's training samples), proxy_reward (mean of the reward trained on: the
reward model's score with `reward="model"`, else the task reward again), policy_loss, kl_loss,
entropy, approx_kl, clip_frac, token_ratio_var and sequence_ratio_var (variance of π/π_old over
the minibatch's tokens, and of GSPO's s_i over its completions, whichever ratio is optimised),
grad_norm, completion_length (mean) and completion_length_max (the
update's longest), zero_std_groups (fraction of groups whose rewards are all equal: no learning
signal), sft_accuracy and sft_greedy_accuracy (the start, repeated), sft_loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import check_choice, hyper_field
from purerl.llm import losses
from purerl.llm.common import LMHyper, LMSetup, SampledGroupsConfig, Start, TrainState
from purerl.llm.mismatch import ratio_statistics
from purerl.llm.rollout import Completions, to_targets
from purerl.llm.tasks import Problems
from purerl.rl.group import group_relative_advantages
from purerl.rl.loop import run_updates
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

RATIOS = ("token", "sequence")
BASELINES = ("mean", "leave_one_out")


# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "accuracy"

@dataclasses.dataclass(frozen=True)
class Config(SampledGroupsConfig):
    group_size: int = 8
    min_group_size: ClassVar[int] = 2
    update_epochs: int = 1
    num_minibatches: int = 1
    ratio: str = "token"  # "token": per-token π/π_old; "sequence": GSPO
    loss_aggregation: str = "sequence"  # per-completion token mean (GRPO paper) or "token" (DAPO)
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO)
    # "mean": the group mean, which contains the sample itself (its advantage is (G−1)/G times the
    # leave-one-out one); "leave_one_out": RLOO's mean of the other G−1 rewards (Ahmadian et al. 2024)
    baseline: str = "mean"
    kl_estimator: str = "k3"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "ratio", self.ratio, RATIOS)
        check_choice("Config", "baseline", self.baseline, BASELINES)
        check_choice("Config", "loss_aggregation", self.loss_aggregation, losses.AGGREGATIONS)
        check_choice("Config", "kl_estimator", self.kl_estimator, losses.KL_ESTIMATORS)


@struct.dataclass
class Hyper(LMHyper):
    clip_eps: float = hyper_field(0.2, "(0, inf)", "ratio clip ε (GSPO uses ~3e-4 with ratio='sequence')")
    kl_coef: float = hyper_field(0.04, "[0, inf)", "β: weight of the KL-to-reference loss")


@struct.dataclass
class Batch:
    tokens: jax.Array  # [B, L]
    mask: jax.Array  # [B, L-1] completion targets
    old_log_prob: jax.Array  # [B, L-1] behaviour log-probs
    ref_log_prob: jax.Array  # [B, L-1]
    advantage: jax.Array  # [B] one per completion


def group_advantages(rewards: jax.Array, group_size: int, scale: bool, baseline: str = "mean") -> jax.Array:
    """[B] advantages for consecutive groups of `group_size` completions of one prompt:
    R_i − b_i, b_i the group mean ("mean") or the mean of the other G−1 rewards
    ("leave_one_out", = G/(G−1)·(R_i − mean)), divided by the group's std when `scale`."""
    check_choice("group_advantages", "baseline", baseline, BASELINES)
    if scale and baseline == "mean":
        return group_relative_advantages(rewards, group_size)
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    if baseline == "leave_one_out":
        centred = centred * group_size / (group_size - 1)
    if scale:
        centred = centred / (jnp.std(grouped, axis=1, keepdims=True) + 1e-8)
    return centred.reshape(-1)


@struct.dataclass
class Generated:
    """One update's samples as the actor hands them over: the prompts (each repeated group_size
    times) and the completions, with the behaviour log-probs."""

    problems: Problems
    completions: Completions


class Learner(NamedTuple):
    """GRPO split at the rollout: `begin(key, hyper)` -> (state, start, loop key);
    `act(params, key, hyper)` -> `Generated` (key: the update's key); `learn(state, start,
    generated, key, update_index, hyper)` -> (state, metrics) with the same update key.
    `make_train` runs both in one program; `purerl.rl.async_runner` on two devices."""

    setup: LMSetup
    begin: Callable[[jax.Array, Hyper], tuple[TrainState, Start, jax.Array]]
    act: Callable[[Any, jax.Array, Hyper], Generated]
    learn: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def make_learner(config: Config, stop_early: bool = False) -> Learner:
    """`stop_early`: generation stops once every completion has ended (its time then follows the
    longest completion of the batch); the samples are the same."""
    setup = LMSetup(config)
    task = setup.task

    def loss_fn(params, batch: Batch, hyper: Hyper):
        log_prob, entropy = setup.log_probs(params, batch.tokens, hyper.temperature)
        if config.ratio == "token":
            advantages = jnp.broadcast_to(batch.advantage[:, None], batch.mask.shape)
            policy_loss, stats = losses.clipped_token_loss(
                log_prob, batch.old_log_prob, advantages, batch.mask, hyper.clip_eps, config.loss_aggregation)
        else:
            policy_loss, stats = losses.clipped_sequence_loss(
                log_prob, batch.old_log_prob, batch.advantage, batch.mask, hyper.clip_eps)
        weights = losses.token_weights(batch.mask, config.loss_aggregation)
        kl = losses.masked_kl(log_prob, batch.ref_log_prob, batch.mask, config.kl_estimator)
        kl_loss = losses.weighted_sum(kl, weights)
        total = policy_loss + hyper.kl_coef * kl_loss
        # Both ratios' spread on the same minibatch, whichever one is optimised: GSPO's argument for
        # the sequence ratio is its lower variance than the per-token ratios.
        spread = ratio_statistics(log_prob, batch.old_log_prob, batch.mask)
        return total, {"policy_loss": policy_loss, "kl_loss": kl_loss,
                       "entropy": losses.masked_mean(entropy, batch.mask), **stats,
                       "token_ratio_var": spread["token_ratio_var"],
                       "sequence_ratio_var": spread["sequence_ratio_var"]}

    def begin(key: jax.Array, hyper: Hyper) -> tuple[TrainState, Start, jax.Array]:
        start = setup.begin(key, hyper)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)
        return TrainState(start.params, optimizer.init(start.params), start.params), start, start.key

    def act(params: Any, key: jax.Array, hyper: Hyper) -> Generated:
        prompt_key, sample_key, _, _ = jax.random.split(key, 4)
        problems = task.sample(prompt_key, config.num_prompts)
        problems = jax.tree.map(lambda x: jnp.repeat(x, config.group_size, axis=0), problems)
        completions = setup.sample(params, problems, sample_key, hyper.temperature, stop_early=stop_early)
        return Generated(problems, completions)

    def learn(state: TrainState, start: Start, generated: Generated, key: jax.Array, update_index: jax.Array,
              hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        del update_index  # GRPO's learning rate is constant
        _, _, epoch_key, eval_key = jax.random.split(key, 4)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)

        def sgd_step(carry, batch: Batch):
            params, opt_state, step = gradient_step(optimizer, loss_fn, *carry, batch, hyper)
            return (params, opt_state), {**step.aux, "grad_norm": step.grad_norm}

        problems, completions = generated.problems, generated.completions
        sequences = setup.assemble(problems, completions)
        score, reward = setup.rewards(start, problems, completions, sequences)
        advantage = group_advantages(reward, config.group_size, config.scale_rewards, config.baseline)
        old_log_prob = to_targets(completions.log_probs, setup.prompt_len)
        ref_log_prob, _ = setup.log_probs(state.reference, sequences.tokens, hyper.temperature)
        batch = Batch(sequences.tokens, sequences.target_mask, old_log_prob, ref_log_prob, advantage)

        (params, opt_state), stats = shuffled_minibatch_epochs(
            epoch_key, (state.params, state.opt_state), batch, config.update_epochs,
            config.num_minibatches, sgd_step)

        grouped = reward.reshape(-1, config.group_size)
        scores = setup.evaluate(params, start.eval_problems, eval_key, hyper.temperature, state.reference)
        metrics = {
            "accuracy": scores["accuracy"],
            "greedy_accuracy": scores["greedy_accuracy"],
            "sample_reward": jnp.mean(score),
            "proxy_reward": jnp.mean(reward),
            "kl_to_ref": scores["kl_to_ref"],
            "completion_length": jnp.mean(completions.lengths.astype(jnp.float32)),
            "completion_length_max": jnp.max(completions.lengths).astype(jnp.float32),
            "zero_std_groups": jnp.mean(jnp.all(grouped == grouped[:, :1], axis=1).astype(jnp.float32)),
            **jax.tree.map(jnp.mean, stats),  # per-epoch means -> one value per update
        }
        return state.replace(params=params, opt_state=opt_state), setup.update_metrics(metrics, start)

    return Learner(setup, begin, act, learn)


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    learner = make_learner(config)

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        state, start, loop_key = learner.begin(key, hyper)

        def update_step(state: TrainState, key: jax.Array, update_index: jax.Array):
            generated = learner.act(state.params, key, hyper)
            return learner.learn(state, start, generated, key, update_index, hyper)

        return run_updates(update_step, state, loop_key, config.num_updates, hyper, on_update)

    return train
