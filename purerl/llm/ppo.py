"""Token-level PPO for language models (RLHF, Ouyang et al. 2022) with a critic and a KL penalty.

Per update: `num_prompts` fresh prompts, one completion each from the current policy (cached
generation, behaviour log-probs kept). Each completion token is an action; the episode ends
at EOS (or after `completion_len` tokens). The reward is the task's (or a Bradley-Terry reward
model's) score R at the last token; the KL to the frozen SFT reference enters either

- `kl_mode="reward"` (InstructGPT): per-token reward −β·k(log π_old, log π_ref) on every
  completion token (k1 by default), so GAE sees it; or
- `kl_mode="loss"`: a loss term β·mean_t k(log π, log π_ref) (k3 by default), the reward
  being R alone.

GAE over tokens (`purerl.rl.advantages.gae`, γ and λ traced) with values from a separate
critic — the decoder with a scalar head, initialised from the SFT policy (or from the reward
model when `reward="model"`). The clipped surrogate and the (clipped) value loss are
averaged over completion tokens only; policy and critic have their own Adam.

Metrics per update: as GRPO's (env_steps_in_update = completions sampled, accuracy =
sampled accuracy on held-out prompts after the update, greedy_accuracy, kl_to_ref,
sample_reward, proxy_reward: the reward model's mean score of the samples next to their true
task reward, ...) plus value_loss and explained_variance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import check_choice, hyper_field
from purerl.llm import losses
from purerl.llm.common import LMHyper, LMSetup, SampledGroupsConfig
from purerl.llm.rollout import Sequences, to_targets
from purerl.rl import advantages as adv
from purerl.rl import losses as rl_losses
from purerl.rl.loop import run_updates
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

KL_MODES = ("reward", "loss")


# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "accuracy"

@dataclasses.dataclass(frozen=True)
class Config(SampledGroupsConfig):
    num_prompts: int = 128
    # completions sampled per prompt (each its own episode with its own critic baseline): G > 1
    # gives PPO the prompts and completions per update of a GRPO run with groups of G
    group_size: int = 1
    update_epochs: int = 2
    num_minibatches: int = 4
    kl_mode: str = "reward"
    kl_estimator: str | None = None  # default: k1 in the reward, k3 as a loss
    normalize_advantages: bool = True
    clip_value_loss: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "kl_mode", self.kl_mode, KL_MODES)
        if self.kl_estimator is None:
            object.__setattr__(self, "kl_estimator", "k1" if self.kl_mode == "reward" else "k3")
        check_choice("Config", "kl_estimator", self.kl_estimator, losses.KL_ESTIMATORS)


@struct.dataclass
class Hyper(LMHyper):
    clip_eps: float = hyper_field(0.2, "(0, inf)", "ratio clip ε")
    kl_coef: float = hyper_field(0.05, "[0, inf)", "β: weight of the KL penalty (reward or loss)")
    gamma: float = hyper_field(1.0, "[0, 1]", "discount over tokens")
    gae_lambda: float = hyper_field(0.95, "[0, 1]", "GAE λ over tokens")
    critic_lr: float = hyper_field(1e-3, "(0, inf)", "Adam learning rate of the critic")
    vf_clip_eps: float = hyper_field(0.2, "(0, inf)", "value clip range (if clip_value_loss)")
    ent_coef: float = hyper_field(0.0, "[0, inf)", "entropy bonus weight")


@struct.dataclass
class TrainState:
    params: Any
    critic: Any
    opt_state: Any
    critic_opt_state: Any
    reference: Any


@struct.dataclass
class Batch:
    tokens: jax.Array  # [B, L]
    mask: jax.Array  # [B, L-1] completion targets
    old_log_prob: jax.Array  # [B, L-1]
    ref_log_prob: jax.Array  # [B, L-1]
    value: jax.Array  # [B, L-1] V(x_≤j) before the update
    advantage: jax.Array  # [B, L-1]
    target: jax.Array  # [B, L-1] λ-returns


def token_rewards(score: jax.Array, sequences: Sequences, kl: jax.Array, kl_coef: float | jax.Array
                  ) -> jax.Array:
    """[B, L-1]: the sequence score at each completion's last token, minus β·kl on its tokens."""
    return score[:, None] * sequences.last_target - kl_coef * kl * sequences.target_mask


def token_advantages(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float | jax.Array,
                     gae_lambda: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """GAE over next-token positions [B, L-1]. A completion ends after its last token (the next
    position is not a completion target), which GAE treats as termination, so nothing after it
    (padding) and nothing before it can enter its advantages."""
    terminated = 1.0 - jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    advantages, targets = adv.gae(rewards.T, values.T, next_values.T, terminated.T,
                                  jnp.zeros_like(terminated.T), gamma, gae_lambda)
    return advantages.T * mask, targets.T * mask


def policy_token_loss(log_prob: jax.Array, entropy: jax.Array, batch: Batch, config: Config, hyper: Hyper
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate over completion tokens (+ β·KL in "loss" mode, − entropy bonus)."""
    policy_loss, stats = losses.clipped_token_loss(
        log_prob, batch.old_log_prob, batch.advantage, batch.mask, hyper.clip_eps, "token")
    entropy = losses.masked_mean(entropy, batch.mask)
    total = policy_loss - hyper.ent_coef * entropy
    kl_loss = jnp.float32(0.0)
    if config.kl_mode == "loss":
        kl_loss = losses.masked_mean(
            losses.masked_kl(log_prob, batch.ref_log_prob, batch.mask, config.kl_estimator), batch.mask)
        total = total + hyper.kl_coef * kl_loss
    return total, {"policy_loss": policy_loss, "kl_loss": kl_loss, "entropy": entropy, **stats}


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    setup = LMSetup(config)
    task = setup.task

    def values_of(critic, tokens):
        return setup.scalar_values(critic, tokens)[:, :-1]

    def policy_loss_fn(params, batch: Batch, hyper: Hyper):
        log_prob, entropy = setup.log_probs(params, batch.tokens, hyper.temperature)
        return policy_token_loss(log_prob, entropy, batch, config, hyper)

    def critic_loss_fn(critic, batch: Batch, hyper: Hyper):
        old_values = batch.value if config.clip_value_loss else None
        value_loss = losses.masked_value_loss(values_of(critic, batch.tokens), batch.target, old_values,
                                              hyper.vf_clip_eps, batch.mask)
        return value_loss, {"value_loss": value_loss}

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        start = setup.begin(key, hyper)
        reference = start.params
        critic_key, key = jax.random.split(start.key)
        # InstructGPT starts the value model from the reward model; without one, from the policy.
        critic = start.reward_model if config.reward == "model" else setup.init_reward_model(critic_key, reference)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)
        critic_optimizer = adam_clipped(hyper.critic_lr, hyper.max_grad_norm)

        def sgd_step(carry, batch: Batch):
            # Policy and critic are separate networks with their own Adam: two steps on one minibatch.
            params, critic, opt_state, critic_opt_state = carry
            params, opt_state, policy = gradient_step(optimizer, policy_loss_fn, params, opt_state, batch, hyper)
            critic, critic_opt_state, value = gradient_step(critic_optimizer, critic_loss_fn, critic,
                                                            critic_opt_state, batch, hyper)
            carry = (params, critic, opt_state, critic_opt_state)
            return carry, {**policy.aux, **value.aux, "grad_norm": policy.grad_norm}

        def update_step(state: TrainState, key: jax.Array, update_index: jax.Array):
            prompt_key, sample_key, epoch_key, eval_key = jax.random.split(key, 4)
            problems = task.sample(prompt_key, config.num_prompts)
            problems = jax.tree.map(lambda x: jnp.repeat(x, config.group_size, axis=0), problems)
            completions = setup.sample(state.params, problems, sample_key, hyper.temperature)
            sequences = setup.assemble(problems, completions)
            score, reward = setup.rewards(start, problems, completions, sequences)
            mask = sequences.target_mask
            old_log_prob = to_targets(completions.log_probs, setup.prompt_len)
            ref_log_prob, _ = setup.log_probs(state.reference, sequences.tokens, hyper.temperature)
            values = values_of(state.critic, sequences.tokens)
            kl = losses.masked_kl(old_log_prob, ref_log_prob, mask, config.kl_estimator)
            kl_coef = hyper.kl_coef if config.kl_mode == "reward" else 0.0
            rewards = token_rewards(reward, sequences, kl, kl_coef)
            advantages, targets = token_advantages(rewards, values, mask, hyper.gamma, hyper.gae_lambda)
            if config.normalize_advantages:
                advantages = rl_losses.masked_normalize(advantages, mask)
            batch = Batch(sequences.tokens, mask, old_log_prob, ref_log_prob, values, advantages, targets)

            carry = (state.params, state.critic, state.opt_state, state.critic_opt_state)
            (params, critic, opt_state, critic_opt_state), stats = shuffled_minibatch_epochs(
                epoch_key, carry, batch, config.update_epochs, config.num_minibatches, sgd_step)

            scores = setup.evaluate(params, start.eval_problems, eval_key, hyper.temperature, state.reference)
            metrics = {
                "accuracy": scores["accuracy"],
                "greedy_accuracy": scores["greedy_accuracy"],
                "kl_to_ref": scores["kl_to_ref"],
                "sample_reward": jnp.mean(score),
                "proxy_reward": jnp.mean(reward),
                "completion_length": jnp.mean(completions.lengths.astype(jnp.float32)),
                "explained_variance": rl_losses.masked_explained_variance(values, targets, mask),
                **jax.tree.map(jnp.mean, stats),  # per-epoch means -> one value per update
            }
            state = TrainState(params, critic, opt_state, critic_opt_state, state.reference)
            return state, setup.update_metrics(metrics, start)

        state = TrainState(reference, critic, optimizer.init(reference), critic_optimizer.init(critic), reference)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
