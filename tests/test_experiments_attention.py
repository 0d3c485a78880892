"""The attention experiments (`rlhf_memory`, `softmax_vs_linear`): a smoke run of each
(`scale=smoke`) that checks the generated report has the expected tables and rows, and a rebuild
of each committed report from its kept results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_experiments import table_under

from experiments import lab


def _smoke(module, tmp_path, *extra: str) -> str:
    argv = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}", *extra]
    assert module.main(argv) == 0
    return (tmp_path / "report" / f"{module.NAME}.md").read_text()


def test_rlhf_memory_smoke_and_rebuild_from_kept_results(tmp_path):
    """The smoke report's tables, then `rebuild=true` from its kept results into another folder:
    the same report, byte for byte, with nothing computed."""
    from experiments import rlhf_memory

    report = _smoke(rlhf_memory, tmp_path)
    plan = lab.load_plan("rlhf_memory", ["scale=smoke"])
    headline = table_under(report, "Headline: 7B RLHF peak accelerator memory")
    assert len(headline) == 15  # PPO and GRPO × (reward model, verifiable) × 3 offloads + DPO × 3
    grpo = [row for row in headline if row[:2] == ["GRPO", "model"]]
    assert [row[3] for row in grpo] == ["nothing", "reference + reward model", "reference + reward model + optimizer"]
    assert [row[4] for row in grpo] == ["121.55 GB (generation)", "93.55 GB (generation)", "65.55 GB (generation)"]
    assert [row[2] for row in headline if row[0] == "GRPO"] == ["3"] * 3 + ["2"] * 3  # verifiable: 2 models
    hand = table_under(report, "The issue's figures for a 7B GRPO")
    assert [row[-1] for row in hand] == ["yes"] * 5 + ["NO", "NO"]  # ZeRO-Offload's 14 GB; 66.7 %, not 64 %
    assert "66.7 % (84 → 28 GB)" in hand[-1][2]
    conventions = table_under(report, "Bytes per parameter of one trained model")
    assert [row[0] for row in conventions] == ["fp32", "bf16", "mixed"]
    assert all(row[-1] == "yes" for row in conventions)
    kv = table_under(report, "KV cache of the policy while it generates")
    assert len(kv) == len(plan.kv_sweep.kv_heads) * len(plan.kv_sweep.lens)
    assert "python -m experiments.rlhf_memory scale=smoke" in report and "## Answer" in report
    assert "## Discussion" in report
    kept = tmp_path / "report" / "rlhf_memory"
    for png in ("phases.png", "activations.png", "kv_cache.png"):
        assert (kept / png).stat().st_size > 10_000
    provenance = json.loads((kept / lab.PROVENANCE).read_text())
    assert provenance["scale"] == "smoke" and provenance["wall_seconds"] > 0
    assert "purerl.llm.memory" in provenance["measures"] and lab.changed_measures(provenance["measures"]) == []

    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert rlhf_memory.main(argv) == 0
    assert (tmp_path / "rebuilt" / "rlhf_memory.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing measured
    for table in provenance["tables"]:
        assert (tmp_path / "rebuilt" / "rlhf_memory" / "results" / f"{table}.csv").read_text() == (
            kept / "results" / f"{table}.csv").read_text()


def test_rebuild_without_kept_results_is_refused(tmp_path, capsys):
    from experiments import rlhf_memory

    assert rlhf_memory.main(["scale=smoke", "rebuild=true", f"report_dir={tmp_path}"]) == 2
    assert "rebuild=true: no kept results in" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["rlhf_memory", "softmax_vs_linear"])
def test_every_scale_loads(name):
    assert set(lab.scales(name)) >= {"ci", "paper", "smoke"}
    for scale in lab.scales(name):
        plan = lab.load_plan(name, [f"scale={scale}"])
        if scale == "paper":
            assert plan.seeds >= 32
        if scale == "full" and name == "softmax_vs_linear":  # rlhf_memory's is arithmetic, not seeds
            assert plan.seeds >= 16


# ---------------------------------------------------------------- softmax_vs_linear
def _numpy_check_recall_batch(tokens, targets, mask, num_pairs, max_pairs, num_keys, num_values):
    """Decode every sequence with plain Python and check it is a well-formed recall problem."""
    pair_base = 1 + num_keys + num_values
    for seq, tgt, msk in zip(tokens, targets, mask):
        bound = {}
        for slot in range(max_pairs):
            token = int(seq[slot])
            if slot < num_pairs:
                key, value = divmod(token - pair_base, num_values)
                assert 0 <= key < num_keys and key not in bound
                bound[key] = value
            else:
                assert token == 0
        asked = []
        for slot in range(max_pairs):
            position = max_pairs + 2 * slot
            query, answer = int(seq[position]), int(seq[position + 1])
            if slot < num_pairs:
                asked.append(query - 1)
                assert answer == 1 + num_keys + bound[query - 1]  # the value bound to that key
                assert msk[position] and int(tgt[position]) == answer
            else:
                assert query == answer == 0 and not msk[position]
        assert sorted(asked) == sorted(bound)  # every key asked once
        assert int(msk.sum()) == num_pairs
        np.testing.assert_array_equal(tgt[:-1], seq[1:])


def test_bound_recall_batch_is_well_formed():
    import jax

    from purerl.attention.mqar import bound_recall_batch

    # The pair count is traced: one compiled generator serves every count.
    make = jax.jit(bound_recall_batch, static_argnames=("max_pairs", "num_keys", "num_values", "batch"))
    for num_pairs in (1, 3, 5):
        batch = make(jax.random.PRNGKey(num_pairs), num_pairs, max_pairs=5, num_keys=7, num_values=3, batch=16)
        assert batch.tokens.shape == (16, 15)
        _numpy_check_recall_batch(*(np.asarray(x) for x in (batch.tokens, batch.targets, batch.loss_mask)),
                                  num_pairs, 5, 7, 3)


def test_cost_model_closed_forms_and_crossover():
    from purerl.attention.cost import cost, crossover

    n, h, d, c = 256, 4, 16, 32
    flops, moved = cost("softmax_xla", n, h, d, c, 4)
    assert flops == 4 * n * n * d * h + 5 * n * n * h
    assert moved == 4 * n * d * h * 4 + 16 * n * n * h
    flops, moved = cost("softmax_fused", n, h, d, c, 2, query_block=64)
    assert flops == 2 * n * n * d * h  # causal blocks skipped: half of QKᵀ and PV
    assert moved == 4 * n * d * h * 2 + 2 * n * d * h * 2 * 2  # K, V re-read by half of the 4 query blocks
    flops, _ = cost("linear_chunked_elu", n, h, d, c, 4)
    # per token: state update 2fd, read-out 2fd, in-chunk scores 2Cf and their product with V 2Cd (f = d)
    assert flops == h * n * (2 * d * d + 2 * d * d + 2 * c * d + 2 * c * d)
    taylor, _ = cost("linear_chunked_taylor", n, h, d, c, 4)
    f = 1 + d + d * d
    assert taylor == h * n * (4 * f * d + 2 * c * (f + d))
    based, _ = cost("linear_chunked_based", n, h, d, c, 4, qk_dim=4)
    assert based == h * n * (4 * 21 * d + 2 * c * (21 + d))  # f = 1 + 4 + 16
    lengths = np.array([64, 128, 256, 512, 1024])
    assert crossover(lengths, lengths**2, 200.0 * lengths) == pytest.approx(200, rel=1e-6)
    assert crossover(lengths, lengths, 2.0 * lengths) == np.inf
    assert crossover(lengths, 2.0 * lengths, lengths) == 64


def _fake_recall(plan, kind, width):
    """Stand-in for training (the slow smoke test trains for real): accuracy by kind, the same
    columns as `train_setting`."""
    import pandas as pd

    from experiments.softmax_vs_linear import memory_per_sequence, seq_len

    level = {"softmax": 0.9, "elu": 0.5, "based": 0.7}[kind]
    seeds = np.arange(plan.seeds)
    return pd.concat([pd.DataFrame({"kind": kind, "width": width, "pairs": m, "seed": seeds, "tokens": seq_len(plan),
                                    "accuracy": level - 0.01 * seeds - 0.02 * m, "mean_abs_cosine": 1 - level,
                                    "asked_weight": level - 0.1, "predicted_accuracy": level - 0.005 * seeds,
                                    "train_accuracy_first10pct": 0.1, "train_accuracy_last10pct": level,
                                    **memory_per_sequence(plan, kind, width)}) for m in plan.recall.pairs],
                     ignore_index=True)


def _check_softmax_vs_linear_report(report, plan):
    r = plan.recall
    headline = table_under(report, "Headline: recall accuracy")
    assert {(row[0], row[1]) for row in headline} == {(str(w), str(m)) for w in r.widths for m in r.pairs}
    assert {row[2] for row in headline} == {str(3 * r.max_pairs)}  # the tokens trained on
    differences = table_under(report, "Accuracy differences over the same")
    assert len(differences) == len(r.widths) * len(r.pairs)
    mechanism = table_under(report, "In each trained model, on the evaluation batches")
    assert len(mechanism) == len(r.arms) * len(r.widths) * len(r.pairs)
    speed = table_under(report, "Attention core only")
    assert [row[0] for row in speed] == [f"{n:,}" for n in plan.speed.lengths]
    gpu = table_under(report, "time = max(FLOPs")
    assert [row[0] for row in gpu][:1] == ["softmax, XLA dense"]
    assert len(gpu) == 1 + len(plan.gpu.fused_efficiencies) + 3  # XLA, fused at each efficiency, 3 linear maps
    share = table_under(report, "Forward FLOPs of one layer")
    assert [row[0] for row in share] == [f"{d:,}" for d in plan.flop_share.d_models]
    assert "## Answer" in report and "## Closing note" in report and "## Discussion" in report


def test_softmax_vs_linear_smoke_report_and_rebuild(tmp_path, monkeypatch):
    """The report's tables at scale=smoke with training stubbed (the slow test below trains), the
    speed measurement for real; then `rebuild=true` from the kept results into another folder gives
    the same report, byte for byte, computing nothing."""
    from experiments import softmax_vs_linear

    monkeypatch.setattr(softmax_vs_linear, "train_setting", _fake_recall)
    report = _smoke(softmax_vs_linear, tmp_path)
    plan = softmax_vs_linear.with_recipe(lab.load_plan("softmax_vs_linear", ["scale=smoke"]))
    _check_softmax_vs_linear_report(report, plan)
    differences = table_under(report, "Accuracy differences over the same")
    assert all(row[3] == "softmax better" for row in differences)  # 0.9 vs 0.5 on every seed
    assert "python -m experiments.softmax_vs_linear scale=smoke" in report
    kept = tmp_path / "report" / "softmax_vs_linear"
    for png in ("recall_vs_bytes.png", "mechanism.png", "prefill.png", "flop_share.png"):
        assert (kept / png).stat().st_size > 10_000
    provenance = json.loads((kept / lab.PROVENANCE).read_text())
    assert set(provenance["tables"]) == {"recall", "timings", "machine", "runs"}
    assert "purerl.attention.kernels" in provenance["measures"]

    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert softmax_vs_linear.main(argv) == 0
    assert (tmp_path / "rebuilt" / "softmax_vs_linear.md").read_text() == report
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_softmax_vs_linear_smoke_trains(tmp_path):
    """The whole smoke run, training included: six small training programs to compile (minutes of
    CPU on a loaded machine), hence slow."""
    from experiments import softmax_vs_linear

    report = _smoke(softmax_vs_linear, tmp_path)
    plan = softmax_vs_linear.with_recipe(lab.load_plan("softmax_vs_linear", ["scale=smoke"]))
    _check_softmax_vs_linear_report(report, plan)
    rows = table_under(report, "In each trained model, on the evaluation batches")
    for row in rows:  # mean abs cosine, asked weight, predicted and measured recall all in [0, 1]
        assert all(0 <= float(cell.split()[0]) <= 1 for cell in row[4:8])


def _square_plus_seeds(plan, x: int) -> int:
    return x * x + int(plan.seeds)


def test_in_workers_returns_results_in_call_order():
    """lab.in_workers: spawned workers give what the serial loop gives, in call order, and report
    every call once as it finishes."""
    calls = [(x,) for x in (5, 1, 4, 2, 3)]
    serial_plan = lab.load_plan("softmax_vs_linear", ["scale=smoke", "seeds=3"])
    parallel_plan = lab.load_plan("softmax_vs_linear", ["scale=smoke", "seeds=3", "workers=2"])
    expected = [x * x + 3 for (x,) in calls]
    seen = []
    assert lab.in_workers(serial_plan, _square_plus_seeds, calls) == expected
    assert lab.in_workers(parallel_plan, _square_plus_seeds, calls,
                          on_result=lambda i, out: seen.append((i, out))) == expected
    assert sorted(seen) == list(enumerate(expected))


def test_index_flags_a_report_whose_measuring_code_changed(tmp_path, monkeypatch):
    """docs/experiments.md shows each kept report's source hash and flags one whose declared
    measuring code no longer has the recorded hash."""
    import purerl.llm.memory as llm_memory
    from experiments import index, rlhf_memory

    recorded = lab.source_digests([llm_memory, rlhf_memory.arithmetic])
    assert set(recorded) == {"purerl.llm.memory", "experiments.rlhf_memory:arithmetic"}
    record = {"scale": "full", "purerl_source": "0123456789abcdef", "wall_seconds": 2.0, "machine": {"cpus": 2},
              "command": "python -m experiments.rlhf_memory scale=full", "measures": recorded}
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / lab.PROVENANCE).write_text(json.dumps(record))
    (tmp_path / "stale").mkdir()
    changed = {**recorded, "experiments.rlhf_memory:arithmetic": "0" * 16, "experiments.rlhf_memory:gone": "1" * 16}
    (tmp_path / "stale" / lab.PROVENANCE).write_text(json.dumps({**record, "measures": changed}))
    monkeypatch.setattr(index, "REPORTS", tmp_path)
    fresh, stale = index.kept_line("fresh"), index.kept_line("stale")
    assert "purerl source `0123456789ab`" in fresh and "unchanged" in fresh and "Stale" not in fresh
    assert "Stale" in stale and "`experiments.rlhf_memory:arithmetic`" in stale
    assert "`experiments.rlhf_memory:gone`" in stale and "purerl.llm.memory" not in stale
    assert "Kept results: none" in index.kept_line("absent")
