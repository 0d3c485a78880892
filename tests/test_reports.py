"""Every committed `full` report rebuilds from its kept per-seed results with one command
(`python -m experiments.<name> scale=full rebuild=true`), computing nothing, and the rebuilt
report's tables equal the committed ones."""

import importlib
import json

import pytest
from test_experiments import tables

from experiments import lab

COMMITTED = lab.REPO_ROOT / "experiments" / "reports"
# Each report and the fewest tables it has: a rebuild that lost a table fails.
REPORTS = {
    "baselines": 4, "exploration_bandits": 6, "gae_lambda_gamma": 5, "kv_cache_4x": 7, "llm_rl": 4,
    "moe_ratios": 6,
    "on_vs_off_policy": 5, "rlhf_memory": 8, "softmax_vs_linear": 8, "stale_ppo": 2, "step_size_control": 2,
    "sync_vs_async": 4,
}


def test_every_full_report_is_covered():
    full = {p.parent.name for p in COMMITTED.glob("*/provenance.json")
            if json.loads(p.read_text())["scale"] == "full"}
    assert full == set(REPORTS)


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_committed_report_rebuilds_from_its_kept_results(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    argv = ["scale=full", "rebuild=true", f"kept_from={COMMITTED / name}", f"out_dir={tmp_path / 'out'}",
            f"report_dir={tmp_path}"]
    assert module.main(argv) == 0
    rebuilt, original = (tables(p.read_text()) for p in (tmp_path / f"{name}.md", COMMITTED / f"{name}.md"))
    assert rebuilt == original and len(original) >= REPORTS[name]
    assert not (tmp_path / "out").exists()  # nothing computed


@pytest.mark.parametrize("diff, expected", [
    ((-0.02, -0.04, -1e-3), "lower"), ((0.02, 1e-3, 0.04), "higher"), ((0.0, -0.01, 0.01), "not resolved at 8 seeds"),
    # float rounding of an exact 0 bound is not evidence
    ((-0.017, -0.037, -6.94e-18), "not resolved at 8 seeds"), ((0.01, 6.94e-18, 0.03), "not resolved at 8 seeds"),
])
def test_verdict_claims_only_when_the_ci_excludes_zero(diff, expected):
    assert lab.verdict(diff, "lower", "higher", 8) == expected
