"""The final table of a multi-turn run: held-out success of the starting (SFT) model and of the
RL policy, overall and by ``success/distance_<d>`` (the number of turns between the fact and
the question in the memory task), read from the run's ``metrics.jsonl``.

    python -m pipeline.stages.multiturn_report configs/multiturn.yaml [--seconds N] [--min-gain 0.2]

Row 0 of the log is the evaluation before RL (the SFT model), the last row with an evaluation
is the trained policy's. With ``--min-gain`` the command exits non-zero when overall success
rose by less than that (the recipe's bar: 20 points).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from pipeline.config import load_config, resolve_storage
from pipeline.infra.tracking import format_table

_DISTANCE = re.compile(r"^eval/success/distance_(\d+)$")


def evaluations(metrics_path: str) -> tuple[dict, dict]:
    """The evaluation rows before (step 0) and after RL (the last one logged)."""
    rows = []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "eval/success" in row or "eval/return" in row:
                    rows.append(row)
    before = next((r for r in rows if r.get("step") == 0), None)
    if before is None or len(rows) < 2:
        raise ValueError(f"{metrics_path}: needs the evaluation at step 0 and one after training")
    return before, rows[-1]


def table(before: dict, after: dict) -> tuple[str, float]:
    """Success by distance, before vs. after, and the overall gain."""
    distances = sorted({int(m.group(1)) for k in (*before, *after) if (m := _DISTANCE.match(k))})
    rows = []
    for d in distances:
        key = f"eval/success/distance_{d}"
        a, b = before.get(key, float("nan")), after.get(key, float("nan"))
        rows.append((f"{d} turn{'s' if d != 1 else ''} between fact and question", f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"))
    key = "eval/success" if "eval/success" in after else "eval/return"
    gain = after[key] - before[key]
    rows.append(("all held-out dialogues", f"{before[key]:.3f}", f"{after[key]:.3f}", f"{gain:+.3f}"))
    header = ("held-out " + key.split("/", 1)[1], "SFT model (step 0)", f"RL policy (step {after['step']})", "change")
    return format_table(rows, header), gain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--seconds", type=float, default=None, help="wall seconds of the whole recipe, to print")
    p.add_argument("--min-gain", type=float, default=None, help="fail below this rise in overall success")
    args = p.parse_args(argv)
    cfg = resolve_storage(load_config(args.config, args.overrides))
    before, after = evaluations(os.path.join(cfg.logging.dir, "metrics.jsonl"))
    text, gain = table(before, after)
    print(text)
    if args.seconds is not None:
        print(f"wall clock of the recipe: {args.seconds:.0f} s ({args.seconds / 60:.1f} min)")
    if args.min_gain is not None and not gain >= args.min_gain:
        print(f"held-out success rose by {gain:+.3f}, less than the required {args.min_gain:+.3f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
