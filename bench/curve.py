"""Throughput against concurrency (noop handler, one daemon), plotted to bench/throughput.png.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/curve.py [--dates 5000] [--repeats 3]

Uses DATABASE_URL's server, or a fresh embedded one, through `datesync bench`'s scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from datesync.bench import drain_curve
from datesync.daemon.settings import Settings

HERE = Path(__file__).resolve().parent
LEVELS = [1, 2, 5, 10, 20, 50]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dates", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates, reference = asyncio.run(drain_curve(Settings.from_env(), LEVELS, args.dates, args.repeats))
    figures = {**{str(k): round(v, 1) for k, v in rates.items()}, "ref_pgbench_jobs_per_s": round(reference, 1)}
    (HERE / "throughput.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(list(rates), list(rates.values()), marker="o", color="#1a7f37", label="datesync drain")
    ax.axhline(reference, color="#6e7781", linestyle="--",
               label="pgbench: claim + finish transactions, 10 clients, same server")
    ax.set_xscale("log")
    ax.set_xticks(LEVELS, [str(c) for c in LEVELS])
    ax.set_xlabel("DATESYNC_CONCURRENCY (one daemon)")
    ax.set_ylabel("dates per second")
    ax.set_title(f"Drain rate, noop handler, {args.dates:,} dates (median of {args.repeats})")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "throughput.png")


if __name__ == "__main__":
    main()
