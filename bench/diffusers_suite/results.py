"""Reading and comparing the two runs of a diffusers test suite (diffusers' classes, Kiln's):
per-test outcomes from pytest's junit XML, and the table every harness here prints."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

Outcomes = dict[str, tuple[str, str]]  # test id -> (passed | failed | skipped, first line of the message)


def outcomes(junit: Path) -> Outcomes:
    """Each test case of a junit XML file and how it ended."""
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "failed", (child.get("message") or child.text or "").strip()
            elif child.tag == "skipped":
                status, message = "skipped", child.get("message") or ""
        results[test_id] = (status, message.splitlines()[0][:200] if message else "")
    return results


def report(reference: Outcomes, kiln: Outcomes, left_out: Callable[[str], bool] = lambda _: False) -> str:
    """Counted tests (those passing on diffusers, less `left_out`), Kiln's passes and share, the
    tests not counted because diffusers itself fails them, and Kiln's failures grouped by message."""
    kept = {t: v for t, v in reference.items() if not left_out(t)}
    counted = sorted(t for t, (status, _) in kept.items() if status == "passed")
    passed = [t for t in counted if kiln.get(t, ("missing", ""))[0] == "passed"]
    groups: dict[str, list[str]] = defaultdict(list)
    for t in counted:
        status, message = kiln.get(t, ("missing", "not collected"))
        if status != "passed":
            groups[message or status].append(t)
    share = 100.0 * len(passed) / len(counted) if counted else 0.0
    lines = [
        f"collected: {len(kept)}" + (f"  (left out: {len(reference) - len(kept)})" if len(kept) < len(reference) else ""),
        f"pass on diffusers:        {len(counted)}",
        f"of those pass on Kiln:    {len(passed)}  ({share:.1f} %)",
    ]
    failing_ref = sorted(t for t, (status, _) in kept.items() if status != "passed")
    if failing_ref:
        lines.append(f"\nnot counted (fail or skip on diffusers itself): {len(failing_ref)}")
        lines += [f"  {t}: {kept[t][1]}" for t in failing_ref]
    for message, tests in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"\n[{len(tests)}] {message}")
        lines += [f"    {t}" for t in tests]
    return "\n".join(lines)
