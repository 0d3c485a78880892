"""One module per algorithm, each exposing `Config`, `Hyper`, `make_train(config)` and
`RETURN_METRIC`: the name of its headline per-update metric (`episode_return` for RL on
environments, `accuracy` for the LM trainers, `regret` for bandits, ...), which results tables and
analysis read instead of each algorithm renaming its metric to fit them. A module whose headline is
better when lower sets `RETURN_LOWER_IS_BETTER = True` (`lower_is_better`). A module may also define
`check_hyper(config, hyper)`, raising ValueError for Hyper values its Config cannot serve (e.g. a
staleness beyond the history it keeps); `purerl-train` calls it before anything compiles."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

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


def return_metric(name: str, config: Any = None) -> str:
    """The headline per-update metric of algorithm `name`: its module's `return_metric(config)`
    where the name depends on the config, else its `RETURN_METRIC`."""
    module = get_algorithm(name)
    if config is not None and hasattr(module, "return_metric"):
        return module.return_metric(config)
    return module.RETURN_METRIC


def lower_is_better(name: str) -> bool:
    """Whether algorithm `name`'s headline metric is better when lower (bandit regret); unknown
    names (summaries written by other tools) count as higher-is-better returns."""
    if name not in ALGORITHMS:
        return False
    return bool(getattr(get_algorithm(name), "RETURN_LOWER_IS_BETTER", False))
