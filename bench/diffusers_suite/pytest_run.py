"""The pytest command line every harness here runs a side with: fetched files, the suite as root
and config, junit XML out, optional plugins and `-k`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


def child_argv(suite: Path, files: Sequence[str], junit: Path, plugins: Sequence[str] = (),
                   keyword: str | None = None, ini_text: str = "[pytest]\n", extra: Sequence[str] = ()) -> list[str]:
    """The argv of one pytest child over `files` of the fetched `suite`; writes `suite/pytest.ini`
    (from `ini_text`) when it is missing, so the fetched tree's own config is never picked up.
    (Not named `pytest_*`: the scheduler harness is itself a pytest plugin and imports it.)"""
    ini = suite / "pytest.ini"
    if not ini.exists():
        ini.write_text(ini_text)
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-c", str(ini),
           "--rootdir", str(suite), f"--junitxml={junit}", "-o", "junit_family=xunit1", *extra]
    for plugin in plugins:
        cmd += ["-p", plugin]
    if keyword:
        cmd += ["-k", keyword]
    return cmd
