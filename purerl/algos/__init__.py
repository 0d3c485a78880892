"""One module per algorithm, each exposing `Config`, `Hyper` and `make_train(config)`."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path; modules are imported lazily so `import purerl.algos` stays cheap.
ALGORITHMS: dict[str, str] = {
    "ppo": "purerl.algos.ppo",
    "stale_ppo": "purerl.algos.stale_ppo",  # PPO whose batches include K older rollouts
    "trpo": "purerl.algos.trpo",
    "a2c": "purerl.algos.a2c",
    "reinforce": "purerl.algos.reinforce",
    "bandit": "purerl.algos.bandits",
    "dqn": "purerl.algos.dqn",
    "sac": "purerl.algos.sac",
    # RL for language models on the tiny LM (purerl/llm, docs/llm.md)
    "llm_ppo": "purerl.llm.ppo",
    "grpo": "purerl.llm.grpo",
    "dpo": "purerl.llm.dpo",
    "reward_model": "purerl.llm.reward_model",
    # Pretraining the tiny LM (MQAR + a synthetic language), MHA -> GQA/MQA conversion (docs/attention.md)
    "lm_pretrain": "purerl.attention.pretrain",
}


def get_algorithm(name: str) -> ModuleType:
    """The algorithm module for `name` (has Config, Hyper, make_train)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo: unknown algorithm {name!r}; allowed: {', '.join(sorted(ALGORITHMS))}")
    return importlib.import_module(ALGORITHMS[name])
