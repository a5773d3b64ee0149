"""Run diffusers' own scheduler tests on diffusers, then on Kiln's schedulers, and compare.

    python -m bench.diffusers_suite.schedulers --suite /tmp/difftests/schedulers [--out DIR] [-k EXPR]
        [--site DIR]         # extra import path for what diffusers' tests need and Kiln does not (torchsde)
        [--kiln-root DIR]    # another checkout's `worker/` (e.g. a `git archive` of an earlier commit)
        [--reuse-reference]  # keep DIR/diffusers.*.xml from an earlier run (diffusers' side does not change)
        [--jobs N]           # split the test files over N pytest children per side

`--suite` is a folder holding diffusers' test files as `tests/schedulers/...` plus `tests/testing_utils.py`
(fetched outside this repository; README.md names the versions). Both runs are the same pytest command
in a child process; the second sets `KILN_SHIM=1`, and this module, loaded as a pytest plugin
(`-p bench.diffusers_suite.schedulers`), then makes diffusers' public scheduler names resolve to Kiln's
classes of the same name before any test module imports them. Counted: the tests that pass on diffusers
itself, less those that test no Kiln class (see `not_kiln`); reported: how many of them pass on Kiln,
and Kiln's failures grouped by their error message.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.diffusers_suite.pytest_run import child_argv
from bench.diffusers_suite.results import outcomes, report

REPO = Path(__file__).resolve().parents[2]
SHIM_ENV = "KILN_SHIM"

# Test classes collected from diffusers' files that exercise no Kiln scheduler: the shared base
# (imported into every module, with no scheduler class) and diffusers' own ConfigMixin tests.
NOT_KILN_CLASSES = ("SchedulerCommonTest", "SchedulerBaseTests")
# Single tests in those files that build a scheduler class Kiln does not have.
NOT_KILN_TESTS = ("test_flow_match_lcm_single_step_no_nan",)


# --- pytest plugin side (loaded in the child process) ---------------------------------------------


def kiln_scheduler_classes() -> dict[str, type]:
    """Kiln's scheduler classes whose names diffusers also exports."""
    import diffusers

    import worker.schedulers as kiln

    return {
        name: value
        for name in kiln.__all__
        if inspect.isclass(value := getattr(kiln, name))
        and issubclass(value, kiln.SchedulerMixin)
        and value is not kiln.SchedulerMixin
        and hasattr(diffusers, name)
    }


def install_shim() -> dict[str, type]:
    """Point `diffusers.<Name>`, `diffusers.schedulers.<Name>` and the defining module's name at Kiln."""
    import diffusers

    mapping = kiln_scheduler_classes()
    schedulers = importlib.import_module("diffusers.schedulers")
    for name, cls in mapping.items():
        home = sys.modules.get(getattr(getattr(diffusers, name), "__module__", ""))
        for module in (diffusers, schedulers, home):
            if module is not None:
                setattr(module, name, cls)
    return mapping


def add_test_helpers() -> None:
    """Both runs: the older test files read `diffusers.utils.torch_device`, which 0.42 keeps only in
    `diffusers.utils.testing_utils`; give it the same value there (no other change to the tests)."""
    import diffusers.utils

    if not hasattr(diffusers.utils, "torch_device"):
        from diffusers.utils.testing_utils import torch_device

        diffusers.utils.torch_device = torch_device


def pytest_configure(config) -> None:
    add_test_helpers()
    if os.environ.get(SHIM_ENV) == "1":
        config._kiln_mapped = install_shim()


def pytest_report_header(config):
    mapped = getattr(config, "_kiln_mapped", None)
    return f"kiln shim: {sorted(mapped) if mapped else 'off'}"


# --- runner side ---------------------------------------------------------------------------------


def suite_files(suite: Path) -> list[str]:
    """The fetched test files, largest first (so that `--jobs` chunks come out even)."""
    files = sorted((suite / "tests" / "schedulers").glob("test_*.py"), key=lambda f: -f.stat().st_size)
    return [str(f.relative_to(suite)) for f in files]


def start_pytest(suite: Path, files: list[str], junit: Path, kiln: bool, args: argparse.Namespace):
    """One pytest child over `files` (diffusers' classes, or Kiln's with the shim); junit XML to `junit`."""
    roots = [args.kiln_root] if kiln and args.kiln_root else []
    paths = [str(suite), *map(str, roots), str(REPO), *([str(args.site)] if args.site else [])]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    env[SHIM_ENV] = "1" if kiln else "0"
    cmd = child_argv(suite, files, junit, ["bench.diffusers_suite.schedulers"], args.keyword)
    return subprocess.Popen(cmd, cwd=suite, env=env, stdout=subprocess.DEVNULL)


def run_side(suite: Path, out: Path, name: str, kiln: bool, args: argparse.Namespace) -> dict:
    """Run one side over every test file in `args.jobs` parallel children; merged outcomes."""
    files = suite_files(suite)
    chunks = [files[i :: args.jobs] for i in range(args.jobs) if files[i :: args.jobs]]
    junits = [out / f"{name}.{i}.xml" for i in range(len(chunks))]
    children = [start_pytest(suite, chunk, junit, kiln, args) for chunk, junit in zip(chunks, junits)]
    for child in children:
        child.wait()
    merged: dict = {}
    for junit in junits:
        merged.update(outcomes(junit))
    return merged


def not_kiln(test_id: str) -> bool:
    """True for collected tests that exercise no Kiln class (left out of the count)."""
    cls, _, name = test_id.rpartition("::")
    return cls.rsplit(".", 1)[-1] in NOT_KILN_CLASSES or name in NOT_KILN_TESTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True, help="folder holding tests/schedulers/")
    parser.add_argument("--out", type=Path, default=None, help="folder for the junit files")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument("--site", type=Path, default=None,
                        help="extra import path for the tests' own needs (e.g. `pip install --target DIR torchsde`)")
    parser.add_argument("--kiln-root", type=Path, default=None, help="folder whose worker/ is measured")
    parser.add_argument("--reuse-reference", action="store_true", help="reuse OUT/diffusers.*.xml")
    parser.add_argument("--jobs", type=int, default=1, help="parallel pytest children per side")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="kiln-sched-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    suite = args.suite.resolve()
    runs = {}
    for name, kiln in (("diffusers", False), ("kiln", True)):
        saved = sorted(out.glob(f"{name}.*.xml"))
        if name == "diffusers" and args.reuse_reference and saved:
            runs[name] = {t: o for junit in saved for t, o in outcomes(junit).items()}
        else:
            for junit in saved:
                junit.unlink()
            runs[name] = run_side(suite, out, name, kiln, args)
    print(report(runs["diffusers"], runs["kiln"], left_out=not_kiln))
    print(f"\njunit files: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
