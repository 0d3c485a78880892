"""`purerl-eval JOB_DIR [JOB_DIR ...] [--episodes N] [--seed S] [--max-steps T] [--gif]`

Evaluates every policy a job saved (`save_policies=true`, the default of `purerl-train`)
over N episodes (any N: evaluation runs its own envs, independent of the training
budget), acting deterministically (the distribution's mode) and stochastically
(a sample), in one vmapped program per job (purerl.rl.evaluation.evaluate). Writes
`JOB_DIR/evaluation.parquet` (atomically) and prints a Markdown table: setting, the
setting's grid values, seed, mode, mean return, std over episodes, episodes.

`--gif` also writes `JOB_DIR/episode_setting<S>_seed<K>.gif`: one deterministic episode of
the policy with the best deterministic mean return, drawn by gymnax's visualizer
(purerl.rendering.write_gif). Catch and MinAtar draw with matplotlib alone; classic
control (CartPole, Acrobot, Pendulum, MountainCar) draws through Gymnasium, which needs
pygame: `pip install 'purerl[render]'`. Without it the evaluation is still written and the GIF
is skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

EVALUATION = "evaluation.parquet"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(table: Any) -> str:
    """setting, grid values, seed, mode, mean return, std, episodes as a Markdown table."""
    fixed = {"setting", "seed", "mode", "mean_return", "std_return", "episodes", "env", "algo"}
    grid = [c for c in table.columns if c not in fixed]
    columns = ["setting", *grid, "seed", "mode", "mean_return", "std_return", "episodes"]
    headers = ["setting", *grid, "seed", "mode", "mean return", "std", "episodes"]
    rows = [[_cell(row[c]) for c in columns] for _, row in table.iterrows()]
    from purerl.results import markdown_table

    numeric = [c not in ("mode",) for c in columns]
    return markdown_table(headers, rows, numeric)


def evaluate_job(job_dir: Path, episodes: int, seed: int, max_steps: int | None, gif: bool) -> Any:
    from purerl import policies, rendering, results
    from purerl.rl import evaluation

    saved = policies.load_policies(job_dir)
    table = evaluation.evaluation_table(saved, episodes=episodes, seed=seed, max_steps=max_steps)
    results.atomic_write_parquet(job_dir / EVALUATION, table)
    print(f"{job_dir}: {saved.algo} on {saved.config.env}, {episodes} episodes per policy and mode")
    print(markdown(table), flush=True)
    print(f"wrote {job_dir / EVALUATION}")
    if gif:
        deterministic = table[table["mode"] == "deterministic"]
        best = deterministic.loc[deterministic["mean_return"].fillna(-math.inf).idxmax()]
        setting, run_seed = int(best["setting"]), int(best["seed"])
        path = job_dir / f"episode_setting{setting}_seed{run_seed}.gif"
        import matplotlib

        matplotlib.use("Agg")  # headless: draw to files only
        try:
            frames = rendering.write_gif(saved, setting, run_seed, path, key_seed=seed)
        except rendering.RenderUnavailable as e:
            print(f"purerl-eval: no GIF: {e}", file=sys.stderr)
        else:
            print(f"wrote {path} ({frames} frames, setting {setting}, seed {run_seed}, deterministic)")
    return table


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a non-negative integer")
    return value


def has_policies(job_dir: Path) -> bool:
    from purerl import policies

    return (job_dir / policies.POLICIES / policies.INDEX).is_file()


def expand_job_dirs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Job folders to evaluate: each path that holds saved policies, or every job below a
    path that does not (a multirun folder); plus the paths under which none was found."""
    from purerl import policies

    jobs, missing = [], []
    for path in paths:
        if has_policies(path):
            jobs.append(path)
            continue
        below = sorted(index.parent.parent for index in path.glob(f"**/{policies.POLICIES}/{policies.INDEX}"))
        jobs.extend(below)
        if not below:
            missing.append(str(path))
    return jobs, missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="purerl-eval", description="Evaluate the policies saved by purerl-train jobs."
    )
    parser.add_argument("job_dirs", nargs="+", type=Path, metavar="JOB_DIR",
                        help="job folder(s) with policies/, or multirun folders (every job below is evaluated)")
    parser.add_argument("--episodes", type=_positive, default=10, help="episodes per policy and mode (default 10)")
    parser.add_argument("--seed", type=_seed, default=0, help="PRNG seed of the evaluation episodes (default 0)")
    parser.add_argument(
        "--max-steps", type=_positive, default=None, help="steps per episode (default: the env's time limit)"
    )
    parser.add_argument("--gif", action="store_true", help="also write a GIF of one episode (best policy)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    from purerl import policies

    job_dirs, missing = expand_job_dirs(args.job_dirs)
    if missing:  # every argument checked before anything runs
        parser.exit(2, f"purerl-eval: error: no saved policies in: {', '.join(missing)} "
                       "(pass a job folder or a multirun folder whose jobs ran with save_policies=true; "
                       "a killed save leaves none)\n")
    for job_dir in job_dirs:
        try:
            evaluate_job(job_dir, args.episodes, args.seed, args.max_steps, args.gif)
        except (ValueError, policies.PoliciesNotFound) as e:
            parser.exit(2, f"purerl-eval: error: {' '.join(str(e).split())}\n")


if __name__ == "__main__":
    main()
