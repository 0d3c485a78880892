"""docs/experiments.md: the index of the experiment reports, with each one's question,
command and headline table, taken from the reports themselves.
`python -m experiments.index` (after regenerating any report)."""

from __future__ import annotations

import json
import re
import sys

from experiments import lab

REPORTS = lab.REPO_ROOT / "experiments" / "reports"
INDEX = lab.REPO_ROOT / "docs" / "experiments.md"
ORDER = ("gae_lambda_gamma", "baselines", "step_size_control", "stale_ppo", "on_vs_off_policy", "exploration_bandits",
         "sync_vs_async")

HEADER = """# Experiments

The policy-gradient follow-up questions, the attention questions and RL
on the tiny language model, each answered by a report generated from its results
by one command. This page is generated too, from the reports
(`python -m experiments.index`); edit the experiments, not this page.

## How an experiment is built

- `conf/experiment/<name>.yaml`: a `purerl-train` preset, the base every training job of
  the experiment starts from (`purerl-train experiment=<name>` trains its main grid alone);
- `conf/experiment/<name>/{ci,paper,smoke}.yaml`: the scales — the experiment's training
  jobs (`purerl-train` overrides), seeds, and the sizes of its own measurements;
- `experiments/<name>.py`: the thin script. It trains the jobs through `purerl-train`'s
  `run_job` (finished jobs are skipped, stale ones refused), runs the measurements that
  are not training, and writes the report;
- `experiments/lab.py`: what the scripts share (scales, jobs, fingerprinted
  measurements, report writing);
- `experiments/reports/<name>.md` and `<name>/*.png`: the committed report (`scale=ci`, or
  `scale=full` where an experiment has one); `scale=paper` writes to `experiments/reports/paper/`;
- `experiments/reports/<name>/results/*.csv` and `<name>/provenance.json` (reports that keep
  their results): the per-setting numbers every table and plot is computed from, with the
  purerl source hash, the hashes of the code that measures, the scale, the machine and the
  wall time. `rebuild=true` remakes the report and its plots from them without computing, and
  this page flags a report whose measuring code has changed since it was made.

```bash
python -m experiments.<name>                 # scale=ci: trains what is missing, then writes the report
python -m experiments.<name> scale=paper     # >= 32 seeds, literature budgets (GPU/TPU)
python -m experiments.<name> force=true      # redo finished jobs and measurements
python -m experiments.<name> seeds=4 out_dir=/tmp/x report_dir=/tmp/x   # any key of the scale file
python -m experiments.<name> workers=2       # train two jobs at a time, each in its own process
python -m experiments.rlhf_memory scale=full rebuild=true   # a report with kept results, remade from them
```

Results go to `outputs/experiments/<name>/<scale>/` (one `purerl-train` job folder per
training job, `measurements.json` + parquet tables per measurement). A rerun reuses what
is complete; a result made by other code or settings is refused with a message (rerun
with `force=true`). `scale=ci` fits the 2-core CPU (the wall times below were measured
while the machine was shared with other jobs, so they are pessimistic); `scale=paper` is
documented, not run here. `tests/test_experiments.py` runs each experiment at `scale=smoke` and checks the
report's tables.
"""

PENDING = {
    "stale_ppo": "part 1: PPO on a buffer of older rollouts",
    "on_vs_off_policy": "part 4: needs DQN and SAC",
    "exploration_bandits": "part 6: needs the bandit agents",
}


def kept_line(name: str) -> str:
    """Where the report's kept results are, what made them, and whether the code that measures has
    changed since (the modules and functions its provenance.json names)."""
    path = REPORTS / name / lab.PROVENANCE
    if not path.exists():
        return "Kept results: none (made before reports kept their numbers)."
    record = json.loads(path.read_text())
    changed = lab.changed_measures(record.get("measures", {}))
    flag = (f"**Stale: the code that measures has changed since** ({', '.join(f'`{c}`' for c in changed)}); rerun "
            f"`{record.get('command')}`." if changed else "Measuring code unchanged since.")
    return (f"Kept results: [experiments/reports/{name}/results/](../experiments/reports/{name}/results/) — "
            f"scale `{record.get('scale')}`, purerl source `{str(record.get('purerl_source'))[:12]}`, "
            f"{record.get('wall_seconds', 0):.1f} s wall on {record.get('machine', {}).get('cpus', '?')} CPUs"
            f"{_parts_seconds(record)}. "
            f"{flag}")


def _parts_seconds(record: dict) -> str:
    seconds = record.get("parts_seconds")
    return f" (its jobs and measurements: {seconds:.0f} s summed, as recorded when each ran)" if seconds else ""


def section(name: str, text: str) -> str:
    title = text.splitlines()[0].lstrip("# ").strip()
    question = re.search(r"\*\*Question\.\*\* (.*)", text)
    command = re.search(r"```bash\n(.*?)\n```", text, re.S)
    headline = text.split(lab.HEADLINE_MARK, 1)
    table = ""
    if len(headline) == 2:
        heading = headline[0].rstrip().splitlines()[-1].lstrip("# ").strip()
        rows = []
        for line in headline[1].lstrip("\n").splitlines():
            if not line.startswith("|"):
                break
            rows.append(line)
        table = f"**{heading}**\n\n" + "\n".join(rows) + "\n"
    parts = [f"## {title}", "", f"Report: [experiments/reports/{name}.md](../experiments/reports/{name}.md)", ""]
    if question:
        parts += [f"*{question.group(1)}*", ""]
    if command:
        parts += ["```bash", command.group(1), "```", ""]
    if table:
        parts += [table]
    parts += [kept_line(name), ""]
    total = re.search(r"Wall time of each part when it ran \((?:total|sum) (\d+) s"
                      r"(?:; the (?:training jobs|parts) ran (?:up to )?(\d+) at a time, "
                      r"from the first start to the last finish in (\d+) s)?",
                      text)
    if total:
        overlap = (f"; its parts ran up to {total.group(2)} at a time and took {total.group(3)} s from first start "
                   "to last finish" if total.group(2) else "")
        parts += [f"Wall time of the last `scale=ci` run: {total.group(1)} s summed over its parts{overlap} (shared "
                  "2-core CPU; per part in the report).", ""]
    return "\n".join(parts)


def main() -> int:
    from purerl import results

    names = [n for n in ORDER if (REPORTS / f"{n}.md").exists()]
    names += sorted(p.stem for p in REPORTS.glob("*.md") if p.stem not in names)
    body = [HEADER] + [section(n, (REPORTS / f"{n}.md").read_text()) for n in names]
    pending = [f"- `{n}` ({why})" for n, why in PENDING.items() if n not in names]
    if pending:
        body.append("## Not yet here\n\n" + "\n".join(pending) + "\n")
    results.atomic_write_text(INDEX, "\n".join(body).rstrip() + "\n")
    print(f"wrote {INDEX} ({len(names)} reports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
