"""A Bradley-Terry reward model as an algorithm of its own (RLHF's second stage).

After the SFT warm-up, each update samples `rm_batch` prompts, two completions each from the
SFT policy, labels them with the task's hidden scoring rule under Bradley-Terry noise, and
takes one Adam step on −log σ(r(x, y_w) − r(x, y_l)); r is the decoder with a scalar head
(initialised from the SFT policy) read at the completion's last token. `llm_ppo` and `grpo`
with `reward="model"` train the same model for `rm_steps` steps before RL.

Metrics per update: env_steps_in_update (completions sampled), rm_true_accuracy (the headline:
the share of pairs with different hidden scores that r orders correctly, measured on each
fresh batch before the step on it: held-out by construction), rm_accuracy (agreement with the
noisy labels), rm_loss, sft_accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import struct

from purerl.llm.common import LMHyper, LMRLConfig, LMSetup
from purerl.rl.loop import run_updates
from purerl.rl.training import gradient_step

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "rm_true_accuracy"

@dataclasses.dataclass(frozen=True)
class Config(LMRLConfig):
    """`num_updates` reward-model steps of `rm_batch` pairs (`rm_steps` is not used here)."""

    task: str = "preference"
    reward: str = "verifiable"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reward != "verifiable":
            raise ValueError(f"Config.reward: got {self.reward!r}; allowed here: 'verifiable' (the "
                             "preference labels come from the task's hidden scoring rule)")

    @property
    def batch_size(self) -> int:
        return 2 * self.rm_batch


@struct.dataclass
class Hyper(LMHyper):
    """The shared knobs; rm_lr and preference_noise are the ones that matter here."""


@struct.dataclass
class TrainState:
    reward_model: Any
    opt_state: Any
    reference: Any  # the SFT policy the pairs are sampled from


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    setup = LMSetup(config)

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        start = setup.begin(key, hyper)
        init_key, key = jax.random.split(start.key)
        optimizer = setup.reward_model_optimizer(hyper)

        def update_step(state: TrainState, key: jax.Array, update_index: jax.Array):
            batch = setup.preference_batch(state.reference, key, hyper)
            reward_model, opt_state, step = gradient_step(optimizer, setup.reward_model_loss, state.reward_model,
                                                          state.opt_state, batch)
            return state.replace(reward_model=reward_model, opt_state=opt_state), setup.update_metrics(step.aux, start)

        reward_model = setup.init_reward_model(init_key, start.params)
        state = TrainState(reward_model, optimizer.init(reward_model), start.params)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
