"""A Bradley-Terry reward model as an algorithm of its own (RLHF's second stage).

After the SFT warm-up, each update samples `rm_batch` prompts, two completions each from the
SFT policy, labels them with the task's hidden scoring rule under Bradley-Terry noise, and
takes one Adam step on −log σ(r(x, y_w) − r(x, y_l)); r is the decoder with a scalar head
(initialised from the SFT policy) read at the completion's last token. `llm_ppo` and `grpo`
with `reward="model"` train the same model for `rm_steps` steps before RL.

Metrics per update: env_steps (completions sampled so far), episode_return = rm_true_accuracy
(the share of pairs with different hidden scores that r orders correctly, measured on each
fresh batch before the step on it: held-out by construction), rm_accuracy (agreement with the
noisy labels), rm_loss, sft_accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import struct

from purerl.config import validate_hyper
from purerl.llm.common import LMHyper, LMRLConfig, LMSetup


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
    reference: Any


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    setup = LMSetup(dataclasses.replace(config, rm_steps=config.num_updates))

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        validate_hyper(hyper)
        start = setup.begin(key, hyper)
        reward_model, metrics = setup.train_reward_model(start.key, start.params, hyper, on_update)
        metrics = {
            "env_steps": (jax.numpy.arange(config.num_updates) + 1) * config.batch_size,
            "episode_return": metrics["rm_true_accuracy"],
            **metrics,
        }
        return TrainState(reward_model, start.params), setup.finish(metrics, start)

    return train
