"""`python -m purerl.demo`: PPO on CartPole, 8 seeds × 3 clip values in one compiled call."""

from __future__ import annotations

from purerl import sweep
from purerl.algos import ppo


def main() -> None:
    train = ppo.make_train(ppo.Config(env="CartPole-v1", total_timesteps=500_000))
    grid = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.2, 0.3])
    result = sweep.run(train, grid, seeds=8, progress=True)
    print(result.table("episode_return", last=10).to_string(index=False, float_format="%.1f"))
    runs = len(grid) * len(result.seeds)
    steps = runs * 500_000
    print(
        f"\n{runs} runs, compile {result.compile_seconds:.1f} s, train {result.run_seconds:.1f} s "
        f"({steps / result.run_seconds / 1e6:.2f} M env-steps/s)"
    )


if __name__ == "__main__":
    main()
