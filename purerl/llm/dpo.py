"""DPO (Rafailov et al. 2023): preference pairs straight into the policy, no reward model, no RL.

Per update: `num_prompts` fresh prompts, two completions each sampled from the frozen SFT
reference (`pair_source="reference"`: offline DPO from an unlimited dataset of reference
samples) or from the current policy (`"policy"`: online DPO), labelled by the task's hidden
scoring rule with Bradley-Terry noise (`preference_noise`); ties (equal hidden scores) are left out
of the loss unless `drop_ties=False`. Then `update_epochs` × `num_minibatches` Adam steps on

    −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])

with sequence log-probs of π_T (sums over completion tokens).

Metrics per update: env_steps_in_update (completions sampled: 2 per pair; the host adds the
cumulative env_steps), accuracy (the headline: sampled accuracy on held-out prompts after the
update), greedy_accuracy, kl_to_ref, dpo_loss, reward_accuracy and reward_margin (of the implicit
reward β log π/π_ref on the training pairs), informative_pairs (share of pairs whose hidden scores
differ), grad_norm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import check_choice, hyper_field
from purerl.llm import losses
from purerl.llm.common import LMHyper, LMRLConfig, LMSetup, TrainState, check_epochs_and_minibatches
from purerl.rl.loop import run_updates
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

PAIR_SOURCES = ("reference", "policy")


# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "accuracy"

@dataclasses.dataclass(frozen=True)
class Config(LMRLConfig):
    num_prompts: int = 64  # preference pairs per update
    update_epochs: int = 1
    num_minibatches: int = 1
    pair_source: str = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "pair_source", self.pair_source, PAIR_SOURCES)
        if self.reward != "verifiable":
            raise ValueError(f"Config.reward: got {self.reward!r}; allowed for DPO: 'verifiable' (DPO "
                             "learns from the preference labels directly, it has no reward model)")
        check_epochs_and_minibatches(self, self.num_prompts)

    @property
    def batch_size(self) -> int:
        """Completions sampled per update (two per pair)."""
        return 2 * self.num_prompts


@struct.dataclass
class Hyper(LMHyper):
    beta: float = hyper_field(0.1, "(0, inf)", "β of the DPO loss (inverse strength of the KL anchor)")


@struct.dataclass
class PairBatch:
    chosen: jax.Array  # [n, L] tokens
    rejected: jax.Array
    chosen_mask: jax.Array  # [n, L-1]
    rejected_mask: jax.Array
    ref_chosen: jax.Array  # [n] sequence log-probs under π_ref
    ref_rejected: jax.Array
    weight: jax.Array  # [n] 0 for dropped ties


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    setup = LMSetup(config)

    def sequence_log_probs(params, tokens, mask, temperature):
        return losses.sequence_log_prob(setup.log_probs(params, tokens, temperature)[0], mask)

    def loss_fn(params, batch: PairBatch, hyper: Hyper):
        chosen = sequence_log_probs(params, batch.chosen, batch.chosen_mask, hyper.temperature)
        rejected = sequence_log_probs(params, batch.rejected, batch.rejected_mask, hyper.temperature)
        loss, stats = losses.dpo_loss(chosen, rejected, batch.ref_chosen, batch.ref_rejected, hyper.beta,
                                      batch.weight)
        return loss, {"dpo_loss": loss, **stats}

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        start = setup.begin(key, hyper)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)

        def sgd_step(carry, batch: PairBatch):
            params, opt_state, step = gradient_step(optimizer, loss_fn, *carry, batch, hyper)
            return (params, opt_state), {**step.aux, "grad_norm": step.grad_norm}

        def update_step(state: TrainState, key: jax.Array, update_index: jax.Array):
            pair_key, epoch_key, eval_key = jax.random.split(key, 3)
            source = state.reference if config.pair_source == "reference" else state.params
            problems, pairs = setup.sample_pairs(source, pair_key, config.num_prompts, hyper)
            chosen, rejected = setup.pair_sequences(problems, pairs)
            weights = setup.pair_weights(pairs)
            batch = PairBatch(
                chosen.tokens, rejected.tokens, chosen.target_mask, rejected.target_mask,
                sequence_log_probs(state.reference, chosen.tokens, chosen.target_mask, hyper.temperature),
                sequence_log_probs(state.reference, rejected.tokens, rejected.target_mask, hyper.temperature),
                jnp.ones(config.num_prompts) if weights is None else weights,
            )
            (params, opt_state), stats = shuffled_minibatch_epochs(
                epoch_key, (state.params, state.opt_state), batch, config.update_epochs,
                config.num_minibatches, sgd_step)
            scores = setup.evaluate(params, start.eval_problems, eval_key, hyper.temperature, state.reference)
            metrics = {
                "accuracy": scores["accuracy"],
                "greedy_accuracy": scores["greedy_accuracy"],
                "kl_to_ref": scores["kl_to_ref"],
                "informative_pairs": jnp.mean((pairs.chosen_score != pairs.rejected_score).astype(jnp.float32)),
                **jax.tree.map(jnp.mean, stats),  # per-epoch means -> one value per update
            }
            return state.replace(params=params, opt_state=opt_state), setup.update_metrics(metrics, start)

        state = TrainState(start.params, optimizer.init(start.params), start.params)
        return run_updates(update_step, state, start.key, config.num_updates, hyper, on_update)

    return train
