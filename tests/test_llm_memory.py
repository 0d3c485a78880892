"""The RLHF memory accounting: the seeds' 7B figures, ZeRO-Offload, the activation formula of
Korthikanti et al. 2022 and the phase-by-phase peak, each against a closed form written out here."""

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
def test_the_issues_offloading_figures_under_zero_offload():
    """Each 7B bf16 model 14 GB; GRPO 84 GB; offload reference + reward model -> 56 GB; ZeRO-Offload
    of the optimizer too moves the gradients with it -> 14 GB (the seeds' 28 GB keeps the 14 GB of
    gradients on the device)."""
    def grpo(*offload):
        return setup_memory("grpo", SEVEN_B, reward_model=True, precision="bf16", offload=offload)

    assert setup_memory("sft", SEVEN_B, precision="bf16")["weights"] == 14 * GB
    assert grpo()["device"] == 84 * GB and grpo()["offloaded"] == 0
    frozen = grpo("reference", "reward_model")
    assert frozen["device"] == 56 * GB and frozen["offloaded"] == 28 * GB and frozen["total"] == 84 * GB
    everything = grpo("reference", "reward_model", "optimizer")
    assert everything["device"] == 14 * GB and everything["offloaded"] == 70 * GB
    assert everything["offloaded_gradients"] == 14 * GB and everything["offloaded_optimizer"] == 28 * GB
    assert everything["device_models"] == 1


def test_quoted_64_percent_is_two_thirds_by_the_same_arithmetic():
    from purerl.llm.memory import saving

    assert saving(84 * GB, 28 * GB) == pytest.approx(2 / 3, abs=1e-12)  # 66.7 %, not "about 64 %"
    assert saving(84 * GB, 14 * GB) == pytest.approx(5 / 6, abs=1e-12)  # with the gradients offloaded too


def test_grpo_with_a_verifiable_reward_holds_two_models():
    assert roles("grpo", reward_model=False) == [("actor", True), ("reference", False)]
    grpo = setup_memory("grpo", SEVEN_B, reward_model=False, precision="bf16")
    assert grpo["models"] == 2 and grpo["weights"] == 28 * GB and grpo["total"] == 70 * GB


def test_mixed_precision_offloading_and_ppo_dpo():
    mixed = setup_memory("grpo", SEVEN_B, reward_model=True, precision="mixed")
    assert mixed["optimizer"] == 84 * GB and mixed["device"] == 140 * GB
    offloaded = setup_memory("grpo", SEVEN_B, reward_model=True, precision="mixed",
                             offload=("reference", "reward_model", "optimizer"))
    assert offloaded["device"] == 14 * GB and offloaded["offloaded"] == 28 * GB + 14 * GB + 84 * GB
    assert setup_memory("ppo", SEVEN_B, reward_model=True, precision="bf16")["device"] == 140 * GB
    # DPO holds no reward model: offloading one moves nothing.
    dpo = setup_memory("dpo", SEVEN_B, precision="bf16", offload=("reward_model",))
    assert dpo["device"] == 70 * GB and dpo["offloaded"] == 0


def test_rollout_kv_cache_only_for_generating_setups():
    from purerl.attention.memory import kv_cache_bytes
    from purerl.llm.memory import rollout_kv_bytes

    kv = dict(layers=32, num_kv_heads=32, head_dim=128, rollout_batch=64, rollout_len=1536, dtype="bf16")
    assert rollout_kv_bytes("grpo", **kv) == 2 * 32 * 32 * 128 * 2 * 1536 * 64 == kv_cache_bytes(
        32, 32, 128, 1536, 64, "bf16")
    assert rollout_kv_bytes("dpo", **kv) == 0


def test_activation_bytes_korthikanti_closed_forms():
    from purerl.llm.memory import activation_bytes, forward_bytes, layer_activation_bytes

    s, b, h, a, L, v = 6, 3, 8, 2, 5, 11
    # Korthikanti et al. 2022 §4.1 term by term: attention 11sbh + 5as²b, MLP 19sbh, two layer norms 4sbh.
    layer = (11 * s * b * h + 5 * a * s * s * b) + 19 * s * b * h + 4 * s * b * h
    assert layer_activation_bytes(h, a, s, b) == layer
    logits = 4 * s * b * v
    assert activation_bytes(L, h, a, s, b, recompute="none", vocab=v) == L * layer + logits
    assert activation_bytes(L, h, a, s, b, recompute="selective", vocab=v) == L * 34 * s * b * h + logits
    assert activation_bytes(L, h, a, s, b, recompute="full") == L * 2 * s * b * h + layer
    assert forward_bytes(h, a, s, b, vocab=v) == layer + logits
    # 7B shape, 8 × 1536 tokens: full recomputation keeps ~8 GB where storing everything needs ~150 GB.
    seven_b = dict(layers=32, hidden=4096, heads=32, seq_len=1536, batch=8)
    assert activation_bytes(**seven_b, recompute="none") == 32 * (34 * 1536 * 8 * 4096 + 5 * 32 * 1536**2 * 8)
    assert activation_bytes(**seven_b, recompute="full") < activation_bytes(**seven_b, recompute="selective") \
        < activation_bytes(**seven_b, recompute="none")


SEVEN_B_WORKLOAD = dict(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, vocab=32000,
                        rollout_batch=64, rollout_len=1536, micro_batch=8, seq_len=1536, recompute="full")


def test_phase_memory_peak_is_the_largest_phase_not_the_sum():
    from purerl.llm.memory import Workload, activation_bytes, forward_bytes, phase_memory

    w = Workload(**SEVEN_B_WORKLOAD)
    kv = 2 * 32 * 32 * 128 * 2 * 1536 * 64  # 2 × layers × H_kv × head_dim × bytes × tokens × batch
    act = activation_bytes(32, 4096, 32, 1536, 8, recompute="full", vocab=32000)
    work = forward_bytes(4096, 32, 1536, 8, vocab=32000)
    grpo = phase_memory("grpo", SEVEN_B, w, reward_model=True, precision="bf16")
    resident = 42 * GB + 28 * GB  # three models' weights + the actor's Adam moments
    assert grpo["generation"] == resident + kv + 4 * 64 * 32000
    assert grpo["scoring"] == resident + work
    assert grpo["training"] == resident + 14 * GB + act
    assert grpo["peak"] == max(grpo["generation"], grpo["scoring"], grpo["training"]) == grpo["generation"]
    assert grpo["peak_phase"] == "generation" and grpo["sum_of_phases"] == 84 * GB + kv + act > grpo["peak"]
    # Offloaded reference + reward model come back one at a time for their scoring pass; under
    # ZeRO-Offload neither gradients nor optimizer state sit on the device in any phase.
    off = phase_memory("grpo", SEVEN_B, w, reward_model=True, precision="mixed",
                       offload=("reference", "reward_model", "optimizer"))
    assert off["scoring"] == 14 * GB + 14 * GB + work
    assert off["training"] == 14 * GB + act and off["generation"] == 14 * GB + kv + 4 * 64 * 32000
    dpo = phase_memory("dpo", SEVEN_B, w, precision="bf16")
    assert dpo["generation"] == 0 and dpo["peak_phase"] == "training"
    ppo = phase_memory("ppo", SEVEN_B, w, reward_model=True, precision="bf16")
    critic_act = activation_bytes(32, 4096, 32, 1536, 8, recompute="full")  # scalar head: no logits
    assert ppo["training"] == 56 * GB + 56 * GB + 28 * GB + act + critic_act


def test_bad_workload_is_named():
    from purerl.llm.memory import Workload

    with pytest.raises(ValueError, match="memory.recompute: got 'some'; allowed: 'none', 'selective', 'full'"):
        Workload(**{**SEVEN_B_WORKLOAD, "recompute": "some"})
    with pytest.raises(ValueError, match="memory.micro_batch: got 0; allowed: an integer ≥ 1"):
        Workload(**{**SEVEN_B_WORKLOAD, "micro_batch": 0})


def test_rows_cover_rewards_and_name_what_moved():
    from purerl.llm.memory import Workload, rlhf_rows

    rows = rlhf_rows(SEVEN_B, ["grpo", "dpo"], ["bf16"], [(), ("reference", "reward_model")],
                     Workload(**SEVEN_B_WORKLOAD), rewards=(True, False))
    assert [(r["setup"], r["reward_model"], r["offload"]) for r in rows] == [
        ("grpo", True, ()), ("grpo", True, ("reference", "reward_model")),
        ("grpo", False, ()), ("grpo", False, ("reference",)),
        ("dpo", False, ()), ("dpo", False, ("reference",))]


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
    header = next(line for line in lines if line.startswith("| set-up"))
    columns = [c.strip() for c in header.split("|")[1:-1]]
    state = [cells[columns.index("training state on device")].strip() for cells in rows]
    assert state == ["84 GB", "56 GB", "14 GB"]
    peak = [cells[columns.index("peak (phase)")].strip() for cells in rows]
    assert all(p.endswith("(generation)") for p in peak)  # the 51.5 GB rollout KV cache of a 7B MHA model
    # One unit system: the budget is compared and printed in the table's decimal GB (80 GiB = 85.9 GB).
    assert columns[-1] == "fits 85.9 GB" and [c[-1].strip() for c in rows] == ["no", "no", "yes"]


@pytest.mark.parametrize("argv,message", [
    (["--params", "lots"], "purerl-memory.params: got 'lots'; allowed: a count like 7B"),
    (["--params", "0B"], "purerl-memory.params: got '0B'; allowed: a positive count"),
    (["--setups", "rlhf"], "purerl-memory.setups: got 'rlhf'; allowed: sft, dpo, grpo, ppo, reward_model"),
    (["--precision", "fp8"], "purerl-memory.precision: got 'fp8'; allowed: fp32, bf16, mixed"),
    (["--offload", "critic"], "purerl-memory.offload: got 'critic'; allowed: 'none' or a comma-separated"),
    (["--rollout-batch", "-2"], "purerl-memory.rollout_batch: got -2; allowed: an integer ≥ 1"),
    (["--recompute", "half"], "memory.recompute: got 'half'; allowed: 'none', 'selective', 'full'"),
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
