"""The RLHF model-count arithmetic reproduces the seeds' 7B figures."""

import pytest

from purerl.llm.memory import roles, setup_memory

GB = 10**9
SEVEN_B = 7 * 10**9


def test_grpo_7b_bf16_is_the_seeds_84_gb():
    grpo = setup_memory("grpo", SEVEN_B, reward_model=True, precision="bf16")
    assert grpo["models"] == 3
    assert grpo["weights"] == 42 * GB  # actor + reference + reward model, 14 GB each
    assert grpo["optimizer"] == 28 * GB  # two bf16 Adam moments of the actor
    assert grpo["gradients"] == 14 * GB
    assert grpo["total"] == 84 * GB


def test_mixed_precision_adds_a_master_copy_and_fp32_moments():
    sft = setup_memory("sft", SEVEN_B, precision="mixed")
    assert sft["total"] == SEVEN_B * (2 + 2 + 12)  # 16 bytes per trained parameter


def test_ppo_holds_four_models_and_trains_two():
    assert roles("ppo", reward_model=True) == [("actor", True), ("critic", True), ("reference", False),
                                               ("reward_model", False)]
    ppo = setup_memory("ppo", 1000, 500, reward_model=True, precision="fp32")
    assert ppo["weights"] == 4 * (1000 + 500 + 1000 + 500)
    assert ppo["gradients"] == 4 * (1000 + 500)
    assert ppo["optimizer"] == 8 * (1000 + 500)
    assert setup_memory("dpo", 1000)["total"] == 1000 * (4 + 4 + 8) + 1000 * 4


def test_bad_setup_is_named():
    with pytest.raises(ValueError, match="memory.setup: got 'rlhf'"):
        roles("rlhf")
