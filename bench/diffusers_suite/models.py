"""Run diffusers' own UNet / VAE model tests on diffusers, then on Kiln, and compare.

    python -m bench.diffusers_suite.models --suite /tmp/difftests/models [--site DIR] [--out DIR] [-k EXPR]

`--suite` is a folder holding diffusers' test files as `tests/...` (fetched outside this repository;
README.md names the versions and what was left out). `--site` is a folder with the test-only packages
diffusers' tests import and Kiln's venv lacks (`parameterized`, `requests-mock`; install them there
with `pip install --target DIR --no-deps parameterized requests-mock`). Both runs are offline
(`HF_HUB_OFFLINE=1`): tests that download from the Hub fail on both sides and are not counted. The
second run loads `kiln_swap_pipelines`, which makes diffusers' public class names (`UNet2DModel`,
`UNet2DConditionModel`, `AutoencoderKL`, ...) resolve to Kiln's before the test modules import them.
Counted: the tests that pass on diffusers itself; reported: how many of them pass on Kiln, and Kiln's
failures grouped by their error message.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from bench.diffusers_suite.pytest_run import child_argv
from bench.diffusers_suite.results import outcomes, report

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILES = (
    "tests/models/unets/test_models_unet_2d_condition.py",
    "tests/models/unets/test_models_unet_2d.py",
    "tests/models/autoencoders/test_models_autoencoder_kl.py",
)
SWAP_PLUGIN = "bench.diffusers_suite.kiln_swap_pipelines"


def start_pytest(suite: Path, test_file: str, junit: Path, site: Path | None, kiln: bool,
                 keyword: str | None) -> subprocess.Popen:
    """Start one pytest child over `test_file` (diffusers' or Kiln's classes), junit XML to `junit`."""
    paths = [str(suite), str(REPO)] + ([str(site)] if site else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    cmd = child_argv(suite, [test_file], junit, [SWAP_PLUGIN] if kiln else [], keyword,
                         ini_text="[pytest]\nmarkers =\n    compile: torch.compile tests\n", extra=["--timeout", "900"])
    log = open(junit.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, cwd=suite, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_side(suite: Path, files: list[str], out: Path, site: Path | None, side: str,
             keyword: str | None) -> dict[str, tuple[str, str]]:
    """Run every file of one side in its own child at once (the suite is CPU-bound and tiny models
    leave cores idle); returns the merged per-test outcomes."""
    junits = [out / f"{side}-{Path(f).stem}.xml" for f in files]
    children = [start_pytest(suite, f, j, site, side == "kiln", keyword) for f, j in zip(files, junits)]
    for child in children:
        child.wait()
    return side_outcomes(out, side)


def side_outcomes(out: Path, side: str) -> dict[str, tuple[str, str]]:
    """Outcomes of every junit file one side left in `out`."""
    merged: dict[str, tuple[str, str]] = {}
    for junit in sorted(out.glob(f"{side}-*.xml")):
        merged.update(outcomes(junit))
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True, help="folder with diffusers' tests/ inside")
    parser.add_argument("--site", type=Path, default=None, help="folder with parameterized, requests_mock")
    parser.add_argument("--out", type=Path, default=None, help="where the junit files go (default: temp)")
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("-k", dest="keyword", default=None)
    parser.add_argument("--only", choices=("diffusers", "kiln", "none"), default=None,
                        help="rerun one side only (none: report on the junit files already in --out)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="kiln-diffsuite-models-"))
    out.mkdir(parents=True, exist_ok=True)
    files = [f for f in args.files if (args.suite / f).exists()]
    sides = [s for s in ("diffusers", "kiln") if args.only in (None, s)]
    for side in sides:
        run_side(args.suite.resolve(), files, out, args.site, side, args.keyword)
    print(report(side_outcomes(out, "diffusers"), side_outcomes(out, "kiln")))


if __name__ == "__main__":
    main()
