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


# ---------------------------------------------------------------- offloading, KV cache, `purerl-memory rlhf`
def test_the_issues_offloading_figures_exactly():
    """Each 7B bf16 model 14 GB; GRPO 84 GB; offload reference + reward model -> 56 GB; also the
    optimizer -> 28 GB (actor weights + gradients)."""
    def grpo(*offload):
        return setup_memory("grpo", SEVEN_B, reward_model=True, precision="bf16", offload=offload)

    assert setup_memory("sft", SEVEN_B, precision="bf16")["weights"] == 14 * GB
    assert grpo()["device"] == 84 * GB and grpo()["offloaded"] == 0
    frozen = grpo("reference", "reward_model")
    assert frozen["device"] == 56 * GB and frozen["offloaded"] == 28 * GB and frozen["total"] == 84 * GB
    everything = grpo("reference", "reward_model", "optimizer")
    assert everything["device"] == 28 * GB and everything["offloaded"] == 56 * GB
    assert everything["device_models"] == 1


def test_mixed_precision_offloading_and_ppo_dpo():
    mixed = setup_memory("grpo", SEVEN_B, reward_model=True, precision="mixed")
    assert mixed["optimizer"] == 84 * GB and mixed["device"] == 140 * GB
    assert setup_memory("grpo", SEVEN_B, reward_model=True, precision="mixed",
                        offload=("reference", "reward_model", "optimizer"))["device"] == 28 * GB
    assert setup_memory("ppo", SEVEN_B, reward_model=True, precision="bf16")["device"] == 140 * GB
    # DPO holds no reward model: offloading one moves nothing.
    dpo = setup_memory("dpo", SEVEN_B, precision="bf16", offload=("reward_model",))
    assert dpo["device"] == 70 * GB and dpo["offloaded"] == 0


def test_rollout_kv_cache_only_for_generating_setups():
    from purerl.attention.memory import kv_cache_bytes
    from purerl.llm.memory import rlhf_rows, rollout_kv_bytes

    kv = dict(layers=32, num_kv_heads=32, head_dim=128, rollout_batch=64, rollout_len=1536, dtype="bf16")
    assert rollout_kv_bytes("grpo", **kv) == 2 * 32 * 32 * 128 * 2 * 1536 * 64 == kv_cache_bytes(
        32, 32, 128, 1536, 64, "bf16")
    assert rollout_kv_bytes("dpo", **kv) == 0
    rows = rlhf_rows(SEVEN_B, ["grpo", "dpo"], ["bf16"], [(), ("reference", "reward_model")], kv=kv)
    assert [r["offload"] for r in rows] == [(), ("reference", "reward_model"), (), ("reference",)]
    assert rows[0]["device_with_kv"] == 84 * GB + rollout_kv_bytes("grpo", **kv)


def test_bad_offload_and_counts_are_named():
    with pytest.raises(ValueError, match="memory.offload: got 'critic'; allowed: 'reference', 'reward_model'"):
        setup_memory("ppo", 10, offload=("critic",))
    with pytest.raises(ValueError, match=r"memory.policy_params: got -1; allowed: an integer ≥ 0"):
        setup_memory("ppo", -1)


def test_cli_prints_the_hand_arithmetic(capsys):
    from purerl.cli.memory import main

    main(["rlhf", "--params", "7B", "--setups", "grpo", "--precision", "bf16", "--budget", "80GiB"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| GRPO")]
    device = [cells[7].strip() for cells in rows]
    assert device == ["84 GB", "56 GB", "28 GB"]
    # One unit system: the budget is compared and printed in the table's decimal GB
    # (80 GiB = 85.9 GB, so 84 GB fits).
    header = next(line for line in lines if line.startswith("| set-up"))
    assert header.rstrip(" |").endswith("fits 85.9 GB") and [c[-1].strip() for c in rows] == ["yes"] * 3


@pytest.mark.parametrize("argv,message", [
    (["--params", "lots"], "purerl-memory.params: got 'lots'; allowed: a count like 7B"),
    (["--params", "0B"], "purerl-memory.params: got '0B'; allowed: a positive count"),
    (["--setups", "rlhf"], "purerl-memory.setups: got 'rlhf'; allowed: sft, dpo, grpo, ppo, reward_model"),
    (["--precision", "fp8"], "purerl-memory.precision: got 'fp8'; allowed: fp32, bf16, mixed"),
    (["--offload", "critic"], "purerl-memory.offload: got 'critic'; allowed: 'none' or a comma-separated"),
    (["--rollout-batch", "-2"], "purerl-memory.rollout_batch: got -2; allowed: an integer ≥ 0"),
    (["--rollout-batch", "4", "--kv-heads", "0"], "kv_cache_bytes.num_kv_heads: got 0; allowed: a positive"),
    (["--rollout-batch", "4", "--kv-dtype", "int3"], "dtype_bytes.dtype: got 'int3'"),
    (["--budget", "lots"], "purerl-memory.budget: got 'lots'"),
])
def test_cli_rejects_bad_input_with_the_field_named(capsys, argv, message):
    from purerl.cli.memory import main

    with pytest.raises(SystemExit) as exit_info:
        main(["rlhf", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
