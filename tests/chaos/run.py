"""`python -m tests.chaos.run [--full] [--only NAME ...]`: run the chaos scenarios on a fresh stack
(one at a time) and print a Markdown table of what they measured. Without `--full`, the small
sizes CI runs; `--full` the sizes reported in docs/reliability.md. Exits 1 if any failed."""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import scenarios
from tests.chaos.harness import ChaosStack

# name → (small form, full form)
SCENARIOS = {
    "worker_kills": (functools.partial(scenarios.worker_kills, rounds=2, jobs_per_round=4),
                     functools.partial(scenarios.worker_kills, rounds=20, jobs_per_round=6)),
    "redis_kill": (functools.partial(scenarios.redis_kill, jobs=8, outage_s=3.0),
                   functools.partial(scenarios.redis_kill, jobs=24, outage_s=3.0)),
    "storage_down": (functools.partial(scenarios.storage_down, jobs=4, outage_s=6.0),
                     functools.partial(scenarios.storage_down, jobs=12, outage_s=30.0)),
    "burst": (functools.partial(scenarios.burst, total=100, keys=10, fairness=0.4, p99_ms=500.0),
              functools.partial(scenarios.burst, total=1000, keys=10)),
    "model_churn": (functools.partial(scenarios.model_churn, jobs=32, group=2, tolerance=0.15),
                    functools.partial(scenarios.model_churn, jobs=200, group=4)),
}


def table(results: list[scenarios.Result]) -> str:
    lines = ["| scenario | size | figures | result |", "|---|---|---|---|"]
    for r in results:
        figures = "; ".join(f"{k}: {v}" for k, v in r.figures.items())
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.problems)
        lines.append(f"| {r.name} | {r.size} | {figures} | {verdict} |")
    return "\n".join(lines)


def run(names: list[str], full: bool) -> list[scenarios.Result]:
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"kiln-chaos-{name}-") as root:
            stack = ChaosStack(Path(root)).start()
            started = time.monotonic()
            try:
                result = SCENARIOS[name][1 if full else 0](stack)
            except Exception as exc:  # report it and go on with the next scenario
                result = scenarios.Result(name, "?", problems=[f"{type(exc).__name__}: {str(exc)[:2000]}"])
            finally:
                stack.stop()
            result.figures["wall s"] = round(time.monotonic() - started)
            print(table([result]).splitlines()[-1], flush=True)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the full sizes (several minutes each)")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    args = parser.parse_args(argv)
    print(f"chaos run ({'full' if args.full else 'small'}) on {platform.node()}, {platform.processor() or '?'}",
          flush=True)
    results = run(args.only, args.full)
    print("\n" + table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
