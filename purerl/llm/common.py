"""What the LM algorithms share: the static config, the traced knobs, the supervised warm-up
(SFT), sampling, evaluation, preference pairs and the Bradley-Terry reward model.

Every `train(key, hyper)` starts the same way: a fresh TinyLM is fine-tuned on demonstrations
for `sft_steps` steps (so RL starts from a policy that sometimes succeeds); that SFT policy is
also the frozen reference π_ref of the KL terms and of DPO, and the policy that preference pairs
for the reward model are sampled from (RLHF's SFT -> RM -> RL pipeline, all in one program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from purerl.attention.lm import LMConfig, TinyLM
from purerl.attention.moe import FFN_KINDS
from purerl.config import ValidatedHyper, _freeze, check_choice, check_minibatches, check_positive_int, hyper_field
from purerl.llm import losses
from purerl.llm.mismatch import ROLLOUT_DTYPES, rollout_params
from purerl.llm.models import ScalarLM, init_lm, make_lm_config, next_token_log_probs, scalar_from_policy
from purerl.llm.rollout import Completions, Sequences, assemble, from_targets, sample
from purerl.llm.tasks import (
    TASKS,
    VOCAB_SIZE,
    PreferencePairs,
    Problems,
    Task,
    completion_mask,
    preference_pairs,
)
from purerl.rl.loop import COUNT_SUFFIX
from purerl.rl.training import adam_clipped, fit

REWARDS = ("verifiable", "model")


@dataclasses.dataclass(frozen=True)
class LMRLConfig:
    """Static settings (changing one recompiles): task, model size, H_kv, counts and lengths."""

    task: str = "addition"
    task_kwargs: tuple = ()  # e.g. {"num_digits": 2}
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    mlp_ratio: int = 4
    # "moe": mixture-of-experts FFN (`purerl.attention.moe`): num_experts, experts_per_token.
    ffn: str = "dense"
    num_experts: int = 4
    experts_per_token: int = 2
    # The rollout engine's numerics: sampling (and its behaviour log-probs) uses the parameters
    # rounded to this dtype, the training pass float32 (`purerl.llm.mismatch`).
    rollout_dtype: str = "float32"
    sft_steps: int = 150
    sft_batch: int = 64
    num_updates: int = 40
    num_prompts: int = 32  # prompts per update
    eval_prompts: int = 128  # held-out prompts (the task's `heldout` split), after every update
    # "verifiable": the task's reward; "model": a Bradley-Terry reward model trained first
    # (rm_steps × rm_batch preference pairs sampled from the SFT policy).
    reward: str = "verifiable"
    rm_steps: int = 200
    rm_batch: int = 64
    # Preference pairs whose hidden scores are equal are ties: left out of the Bradley-Terry and
    # DPO losses (annotators can say "tie"; datasets usually drop them) instead of coin-flip labels.
    drop_ties: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "task_kwargs", _freeze(self.task_kwargs))
        check_choice(owner, "task", self.task, tuple(TASKS))
        for name in ("d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_ratio", "sft_batch",
                     "num_updates", "num_prompts", "eval_prompts", "rm_steps", "rm_batch"):
            check_positive_int(owner, name, getattr(self, name))
        if isinstance(self.sft_steps, bool) or not isinstance(self.sft_steps, int) or self.sft_steps < 0:
            raise ValueError(f"{owner}.sft_steps: got {self.sft_steps!r}; allowed: an integer ≥ 0")
        if self.d_model % self.num_heads:
            raise ValueError(f"{owner}.num_heads: {self.num_heads} does not divide d_model={self.d_model}")
        if self.num_heads % self.num_kv_heads:
            allowed = [d for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]
            raise ValueError(f"{owner}.num_kv_heads: got {self.num_kv_heads}; allowed: a divisor of "
                             f"num_heads={self.num_heads}: {allowed}")
        check_choice(owner, "reward", self.reward, REWARDS)
        check_choice(owner, "ffn", self.ffn, FFN_KINDS)
        check_choice(owner, "rollout_dtype", self.rollout_dtype, ROLLOUT_DTYPES)
        for name in ("num_experts", "experts_per_token"):
            check_positive_int(owner, name, getattr(self, name))
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"{owner}.experts_per_token: got {self.experts_per_token}; allowed: 1..num_experts="
                             f"{self.num_experts}")
        try:
            self.task_spec  # noqa: B018 - builds and validates the task
        except TypeError as e:
            raise ValueError(f"{owner}.task_kwargs: {e}") from None

    @property
    def task_spec(self) -> Task:
        return TASKS[self.task](**dict(self.task_kwargs))

    @property
    def env(self) -> str:
        """The results tables' `env` column."""
        return self.task

    @property
    def seq_len(self) -> int:
        task = self.task_spec
        return task.prompt_len + task.completion_len

    @property
    def lm_config(self) -> LMConfig:
        return dataclasses.replace(
            make_lm_config(VOCAB_SIZE, self.seq_len, self.d_model, self.num_layers, self.num_heads,
                           self.num_kv_heads, self.mlp_ratio),
            ffn=self.ffn, num_experts=self.num_experts, experts_per_token=self.experts_per_token)


@dataclasses.dataclass(frozen=True)
class SampledGroupsConfig(LMRLConfig):
    """The online trainers' counts: per update `num_prompts` prompts × `group_size` completions,
    then `update_epochs` passes of `num_minibatches` gradient steps over them."""

    group_size: int = 1
    update_epochs: int = 1
    num_minibatches: int = 1
    # A group-relative baseline needs two completions of a prompt.
    min_group_size: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        owner, size = type(self).__name__, self.group_size
        if isinstance(size, bool) or not isinstance(size, int) or size < self.min_group_size:
            why = " (a group of one has no baseline)" if self.min_group_size > 1 else ""
            raise ValueError(f"{owner}.group_size: got {size!r}; allowed: an integer ≥ {self.min_group_size}{why}")
        check_epochs_and_minibatches(self, self.batch_size)

    @property
    def batch_size(self) -> int:
        """Completions per update."""
        return self.num_prompts * self.group_size


@struct.dataclass
class LMHyper(ValidatedHyper):
    """Traced knobs shared by the LM algorithms (validated like every Hyper: `purerl.config`)."""

    lr: float = hyper_field(1e-3, "(0, inf)", "Adam learning rate of the RL/DPO phase")
    temperature: float = hyper_field(1.0, "(0, inf)", "sampling temperature (π_T = softmax(logits/T))")
    max_grad_norm: float = hyper_field(1.0, "(0, inf]", "global gradient-norm clip")
    sft_lr: float = hyper_field(3e-3, "(0, inf)", "Adam learning rate of the supervised warm-up")
    rm_lr: float = hyper_field(1e-3, "(0, inf)", "Adam learning rate of the reward model")
    preference_noise: float = hyper_field(
        0.1, "[0, inf)", "Bradley-Terry noise of preference labels: P(a≻b) = σ(Δscore / noise)")


@struct.dataclass
class TrainState:
    """A policy trained by one optimiser, and the frozen reference it is anchored to."""

    params: Any
    opt_state: Any
    reference: Any


@struct.dataclass
class Start:
    params: Any  # the SFT policy, also the frozen reference
    eval_problems: Problems
    reward_model: Any  # None unless reward="model"
    stats: dict[str, jax.Array]
    key: jax.Array  # what is left for the algorithm


class LMSetup:
    """Models and shared phases for one static config; every method is pure in its key."""

    def __init__(self, config: LMRLConfig):
        self.config = config
        self.task = config.task_spec
        self.policy = TinyLM(config.lm_config)
        self.scalar = ScalarLM(config.lm_config)
        self.seq_len = config.seq_len
        self.completion_len = self.task.completion_len
        self.prompt_len = self.task.prompt_len

    # -------------------------------------------------------------- policy
    def init_policy(self, key: jax.Array) -> Any:
        return init_lm(self.policy, key, self.seq_len)

    def log_probs(self, params: Any, tokens: jax.Array, temperature: float | jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
        """[B, L-1] next-token log π_T and entropies."""
        return next_token_log_probs(self.policy.apply(params, tokens), tokens, temperature)

    def sample(self, params: Any, problems: Problems, key: jax.Array, temperature: float | jax.Array,
               greedy: bool = False, stop_early: bool = False) -> Completions:
        params = rollout_params(params, self.config.rollout_dtype)
        return sample(self.config.lm_config, params, problems.prompt, key, temperature, self.completion_len,
                      greedy, stop_early=stop_early)

    def assemble(self, problems: Problems, completions: Completions) -> Sequences:
        return assemble(problems.prompt, completions.tokens, completions.mask)

    def evaluate(self, params: Any, problems: Problems, key: jax.Array, temperature: float | jax.Array,
                 reference: Any) -> dict[str, jax.Array]:
        """On held-out `problems`: the mean task reward (accuracy on addition) of one completion
        per prompt sampled at `temperature` ("accuracy") and of the greedy one
        ("greedy_accuracy"), both from one generation program (the prompts twice, half greedy);
        and "kl_to_ref", the mean over the sampled completions of Σ_t k3 (an unbiased estimate
        of the sequence-level KL(π_T ‖ π_ref,T))."""
        count = problems.prompt.shape[0]
        doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), problems)
        greedy = jnp.arange(2 * count) >= count
        completions = self.sample(params, doubled, key, temperature, greedy)
        reward = self.task.reward(doubled, completions.tokens)
        sampled = jax.tree.map(lambda x: x[:count], completions)
        sequences = assemble(problems.prompt, sampled.tokens, sampled.mask)
        ref_log_prob = from_targets(self.log_probs(reference, sequences.tokens, temperature)[0], self.prompt_len)
        kl = losses.kl_estimate(sampled.log_probs, ref_log_prob, "k3")
        return {"accuracy": jnp.mean(reward[:count]), "greedy_accuracy": jnp.mean(reward[count:]),
                "kl_to_ref": jnp.mean(losses.sequence_log_prob(kl, sampled.mask))}

    def eval_problems(self, key: jax.Array) -> Problems:
        return self.task.sample_heldout(key, self.config.eval_prompts)

    def sft(self, key: jax.Array, params: Any, hyper: LMHyper) -> tuple[Any, dict[str, jax.Array]]:
        """`sft_steps` Adam steps of cross-entropy on demonstration completions (answer + EOS)."""
        optimizer = adam_clipped(hyper.sft_lr, 1.0)

        def loss_fn(params, sequences: Sequences):
            log_prob, _ = self.log_probs(params, sequences.tokens, 1.0)
            return -losses.masked_mean(log_prob, sequences.target_mask), ()

        def demonstrations(step_key):
            problems = self.task.sample(step_key, self.config.sft_batch)
            return assemble(problems.prompt, problems.answer, completion_mask(problems.answer))

        params, _, stats = fit(optimizer, loss_fn, params, optimizer.init(params),
                               jax.random.split(key, self.config.sft_steps), demonstrations)
        final = stats.loss[-1] if self.config.sft_steps else jnp.float32(jnp.nan)
        return params, {"sft_loss": final}

    def warm_start(self, key: jax.Array, hyper: LMHyper, eval_problems: Problems
                   ) -> tuple[Any, dict[str, jax.Array]]:
        """Fresh init + SFT: the starting policy and the frozen reference, evaluated on the same
        held-out prompts as every update ("sft_accuracy", "sft_greedy_accuracy")."""
        init_key, sft_key, eval_key = jax.random.split(key, 3)
        params, stats = self.sft(sft_key, self.init_policy(init_key), hyper)
        scores = self.evaluate(params, eval_problems, eval_key, hyper.temperature, params)
        return params, {**stats, "sft_accuracy": scores["accuracy"],
                        "sft_greedy_accuracy": scores["greedy_accuracy"]}

    def begin(self, key: jax.Array, hyper: LMHyper) -> Start:
        """The common start of every run: held-out eval prompts, SFT policy (= reference) and,
        with `reward="model"`, the reward model. The keys are split the same way for every
        algorithm, so one seed gives every algorithm the same SFT policy and eval prompts."""
        warm_key, eval_key, rm_key, key = jax.random.split(key, 4)
        eval_problems = self.eval_problems(eval_key)
        params, stats = self.warm_start(warm_key, hyper, eval_problems)
        reward_model = None
        if self.config.reward == "model":
            reward_model, rm_metrics = self.train_reward_model(rm_key, params, hyper)
            stats = {**stats, "rm_true_accuracy": jnp.mean(rm_metrics["rm_true_accuracy"][-10:])}
        return Start(params, eval_problems, reward_model, stats, key)

    def rewards(self, start: Start, problems: Problems, completions: Completions, sequences: Sequences
                ) -> tuple[jax.Array, jax.Array]:
        """(task score, the reward trained on): the reward model's r(x, y) if there is one."""
        score = self.task.reward(problems, completions.tokens)
        if start.reward_model is None:
            return score, score
        return score, self.reward_model_score(start.reward_model, sequences)

    # -------------------------------------------------------------- preferences
    def sample_pairs(self, params: Any, key: jax.Array, num_pairs: int, hyper: LMHyper
                     ) -> tuple[Problems, PreferencePairs]:
        """Two samples per fresh prompt from `params`, labelled by the hidden rule with noise."""
        prompt_key, first_key, second_key, label_key = jax.random.split(key, 4)
        problems = self.task.sample(prompt_key, num_pairs)
        first = self.sample(params, problems, first_key, hyper.temperature).tokens
        second = self.sample(params, problems, second_key, hyper.temperature).tokens
        return problems, preference_pairs(label_key, self.task, problems, first, second,
                                          hyper.preference_noise)

    def pair_weights(self, pairs: PreferencePairs) -> jax.Array | None:
        """1 for pairs the losses learn from; ties get 0 when `drop_ties`."""
        if not self.config.drop_ties:
            return None
        return (pairs.chosen_score != pairs.rejected_score).astype(jnp.float32)

    def pair_sequences(self, problems: Problems, pairs: PreferencePairs) -> tuple[Sequences, Sequences]:
        def build(tokens):
            return assemble(problems.prompt, tokens, completion_mask(tokens))

        return build(pairs.chosen), build(pairs.rejected)

    # -------------------------------------------------------------- reward model
    def init_reward_model(self, key: jax.Array, policy_params: Any) -> Any:
        return scalar_from_policy(policy_params, init_lm(self.scalar, key, self.seq_len))

    def scalar_values(self, params: Any, tokens: jax.Array) -> jax.Array:
        """[B, L]: the scalar head at every position."""
        return self.scalar.apply(params, tokens)

    def reward_model_score(self, params: Any, sequences: Sequences) -> jax.Array:
        """[B]: r(x, y), the scalar head at the completion's last token."""
        values = self.scalar_values(params, sequences.tokens)[:, 1:]  # entry j: after token j+1
        return jnp.sum(values * sequences.last_target, axis=1)

    def preference_batch(self, reference_params: Any, key: jax.Array, hyper: LMHyper) -> tuple:
        """`rm_batch` fresh pairs sampled from the reference: (chosen, rejected, pairs, weights)."""
        problems, pairs = self.sample_pairs(reference_params, key, self.config.rm_batch, hyper)
        chosen, rejected = self.pair_sequences(problems, pairs)
        return chosen, rejected, pairs, self.pair_weights(pairs)

    def reward_model_loss(self, params: Any, batch: tuple) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Bradley-Terry loss of a `preference_batch`; metrics: the loss, accuracy on the (noisy)
        labels, and accuracy against the noiseless hidden ordering (`true_order_accuracy`) of the
        parameters before the step, on this fresh batch: held-out by construction."""
        chosen, rejected, pairs, weights = batch
        chosen_reward = self.reward_model_score(params, chosen)
        rejected_reward = self.reward_model_score(params, rejected)
        loss, stats = losses.bradley_terry_loss(chosen_reward, rejected_reward, weights)
        true_accuracy = true_order_accuracy(chosen_reward - rejected_reward, pairs)
        return loss, {"rm_loss": loss, "rm_accuracy": stats["pair_accuracy"], "rm_true_accuracy": true_accuracy}

    def reward_model_optimizer(self, hyper: LMHyper):
        return adam_clipped(hyper.rm_lr, hyper.max_grad_norm)

    def train_reward_model(self, key: jax.Array, reference_params: Any, hyper: LMHyper,
                           on_step: Callable[[jax.Array], None] | None = None
                           ) -> tuple[Any, dict[str, jax.Array]]:
        """Bradley-Terry on fresh pairs sampled from the reference each step (`rm_steps` steps of
        `rm_batch` pairs); metrics per step as `reward_model_loss`'s."""
        init_key, key = jax.random.split(key)
        params = self.init_reward_model(init_key, reference_params)
        optimizer = self.reward_model_optimizer(hyper)
        params, _, stats = fit(optimizer, self.reward_model_loss, params, optimizer.init(params),
                               jax.random.split(key, self.config.rm_steps),
                               lambda step_key: self.preference_batch(reference_params, step_key, hyper), on_step)
        return params, stats.aux

    def update_metrics(self, metrics: dict[str, jax.Array], start: Start) -> dict[str, jax.Array]:
        """One update's metrics plus its sample count (`<name>_in_update`: purerl.rl.loop) and the
        once-per-run start statistics (the same every update), all under the traced-hyper contract."""
        return {**metrics, "env_steps" + COUNT_SUFFIX: jnp.int32(self.config.batch_size), **start.stats}


def true_order_accuracy(margin: jax.Array, pairs: PreferencePairs) -> jax.Array:
    """Fraction of pairs with different hidden scores whose reward `margin` (chosen − rejected)
    orders them correctly."""
    truth = pairs.chosen_score - pairs.rejected_score
    informative = (truth != 0).astype(jnp.float32)
    correct = (jnp.sign(margin) == jnp.sign(truth)).astype(jnp.float32)
    return jnp.sum(correct * informative) / jnp.maximum(jnp.sum(informative), 1.0)


def check_epochs_and_minibatches(config: Any, batch_size: int) -> None:
    """update_epochs positive; num_minibatches positive and splitting the batch evenly."""
    owner = type(config).__name__
    check_positive_int(owner, "update_epochs", config.update_epochs)
    check_minibatches(owner, "num_minibatches", config.num_minibatches, batch_size, "the completions per update")
