"""The sync_vs_async report (experiments/sync_vs_async.py): a smoke run whose tables agree with the
kept per-seed numbers (lags within each arm's staleness bound, nothing dropped under block, the
paired throughput ratio recomputed from the kept seeds; the generation times kept per update add up
to the sync learner's idle time, the Repeat arms' closed-form longest completion matches a direct
computation), `rebuild=true` remaking the same report, and the committed `scale=full` report
rebuilding from its kept results."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_experiments import table_under

from experiments import lab

COMMITTED = lab.REPO_ROOT / "experiments" / "reports"


def test_sync_vs_async_smoke_and_rebuild_from_kept_results(tmp_path):
    from experiments import sync_vs_async as sva

    argv = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]
    assert sva.main(argv) == 0
    report = (tmp_path / "report" / "sync_vs_async.md").read_text()
    plan = lab.load_plan("sync_vs_async", ["scale=smoke"])
    kept = tmp_path / "report" / "sync_vs_async"
    seeds = pd.read_csv(kept / "results" / "seeds.csv")

    rows = table_under(report, "Headline: throughput against staleness")
    tasks = ("PPO, CartPole, none", "PPO, CartPole, vtrace", "GRPO, tiny LM", "GRPO, Repeat, power law",
             "GRPO, Repeat, uniform")
    expected = [(task, mode) for task in tasks for mode in plan.modes]
    assert [(r[0], r[1]) for r in rows] == expected
    for _, mode, bound, _, _, _, lag, dropped, gain, verdict in rows:
        settings = plan.modes[mode]
        assert int(bound) == (0 if settings.mode == "sync" else settings.max_staleness)
        max_lag = float(lag.split("[")[1].rstrip("]"))
        assert max_lag <= int(bound)  # the runner's staleness bound holds in every update
        if settings.mode == "sync" or settings.get("on_stale") == "block":
            assert float(dropped) == 0
        if settings.mode == "sync":
            assert gain == "—" and max_lag == 0
        else:
            assert verdict in {"faster", "slower", f"not resolved at {plan.seeds} seeds"}
    # The paired ratio, recomputed from the kept per-seed numbers.
    algo, correction, mode = "ppo", "vtrace", "async S=2 block"
    part = seeds[(seeds.algo == algo) & (seeds.correction == correction)].pivot_table(
        index="seed", columns="mode", values="samples_per_s")
    ratio = np.mean(part[mode] / part["sync"])
    row = next(r for r in rows if r[:2] == ["PPO, CartPole, vtrace", mode])
    assert row[8].startswith("×" + lab.fmt(ratio))
    assert len(seeds) == plan.seeds * 20 and (seeds.mean_lag <= seeds.staleness_bound).all()
    assert (seeds.learner_idle_share.between(0, 1)).all() and (seeds.samples_per_s > 0).all()

    # In sync the learner waits exactly while the actor generates: the kept per-update generation
    # times (mapped from the rollouts by index) sum to the learner's idle time.
    curves = pd.read_csv(kept / "results" / "curves.csv")
    sync = seeds[seeds["mode"] == "sync"].set_index(["algo", "correction", "seed"])
    gen = curves[curves["mode"] == "sync"].groupby(["algo", "correction", "seed"]).gen_s.sum()
    np.testing.assert_allclose(gen.loc[sync.index], sync.learner_idle_share * sync.wall_s, rtol=1e-6)
    grpo = seeds[seeds.algo.str.startswith("grpo")]
    assert grpo.decode_waste.between(0, 1).all() and (grpo.longest_mean <= 9).all()  # max_len 8 + EOS
    assert seeds[seeds.algo == "ppo"].longest_mean.isna().all()
    lengths = table_under(report, "Decoding stops once")
    assert [r[0] for r in lengths] == ["GRPO, tiny LM", "GRPO, Repeat, power law", "GRPO, Repeat, uniform"]
    for row, tail in zip(lengths[1:], (1.5, 0.0), strict=True):  # E[max of 4 counts] + EOS, by enumeration
        p = np.arange(1, 9) ** -tail / np.sum(np.arange(1, 9) ** -tail)
        grid = np.stack(np.meshgrid(*[np.arange(1, 9)] * 4, indexing="ij"), -1).reshape(-1, 4)
        weight = np.prod(p[grid - 1], axis=1)
        assert row[2].startswith(f"{np.sum(weight * (grid.max(1) + 1)):.1f} (sd")
    paired_rows = table_under(report, "Power-law vs uniform lengths")
    assert len(paired_rows) == 3 + 2 * (len(plan.modes) - 1)
    assert all(r[2] in {"power law lower", "power law higher", f"not resolved at {plan.seeds} seeds"}
               for r in paired_rows)

    learning = table_under(report, "Learning: at equal updates")
    assert [(r[0], r[1]) for r in learning] == expected
    assert all(r[4] in {"—", "learns less", "learns more", f"not resolved at {plan.seeds} seeds"} for r in learning)
    assert len(table_under(report, "Off-policy correction")) == len(plan.modes)
    assert "## Closing note" in report and "## Discussion" in report and "Sebulba" in report
    assert "python -m experiments.sync_vs_async scale=smoke" in report
    for png in ("throughput_vs_staleness", "learning_vs_samples", "learning_vs_wall", "generation_vs_longest"):
        assert (kept / f"{png}.png").stat().st_size > 10_000

    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert sva.main(argv) == 0
    assert (tmp_path / "rebuilt" / "sync_vs_async.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing measured
