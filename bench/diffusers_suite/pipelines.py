"""Run diffusers' own SD / SDXL / DDPM pipeline fast tests on diffusers, then on Kiln, and compare.

    python -m bench.diffusers_suite.pipelines --suite /tmp/difftests/pipelines [--out DIR] [-k EXPR]

`--suite` is a folder holding diffusers' test files as `tests/...` (fetched outside this repository;
README.md names the versions). Both runs use the same offline Hugging Face cache, in which the one
Hub file the fast tests read — the `hf-internal-testing/tiny-random-clip` tokenizer — is stood in for
by Kiln's offline test tokenizer, so that nothing reaches the network. The second run loads
`kiln_swap_pipelines`, which makes diffusers' class names resolve to Kiln's. Counted: the tests that
pass on diffusers itself; reported: how many of them pass on Kiln, and Kiln's failures grouped by
their error message.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.diffusers_suite.pytest_run import child_argv
from bench.diffusers_suite.results import outcomes, report

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILES = (
    "tests/pipelines/stable_diffusion/test_stable_diffusion.py",
    "tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py",
    "tests/pipelines/ddpm/test_ddpm.py",
)
TOKENIZER_REPO = "hf-internal-testing/tiny-random-clip"


def build_hub_cache(root: Path) -> Path:
    """An offline hub cache holding a stand-in for the tiny CLIP tokenizer the fast tests download."""
    sys.path.insert(0, str(REPO))
    from tests.pipelines.hubcache import populate_cache
    from tests.pipelines.tiny import tiny_tokenizer

    source = root / "tokenizer"
    tiny_tokenizer().save_pretrained(source)
    populate_cache(root / "hub", TOKENIZER_REPO, source)
    return root / "hub"


def run_pytest(suite: Path, files: list[str], junit: Path, hub: Path, kiln: bool, keyword: str | None) -> None:
    """One pytest run over `files` in a child process (diffusers' or Kiln's classes), junit XML to `junit`."""
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(suite), str(REPO)]))
    cmd = child_argv(suite, files, junit, ["bench.diffusers_suite.kiln_swap_pipelines"] if kiln else [], keyword)
    subprocess.run(cmd, cwd=suite, env=env, check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True, help="folder with diffusers' tests/ inside")
    parser.add_argument("--out", type=Path, default=None, help="where the junit files go (default: temp)")
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("-k", dest="keyword", default=None)
    parser.add_argument("--only", choices=("diffusers", "kiln"), default=None, help="rerun one side only")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="kiln-diffsuite-"))
    out.mkdir(parents=True, exist_ok=True)
    hub = build_hub_cache(out)
    files = [f for f in args.files if (args.suite / f).exists()]
    for side in ("diffusers", "kiln"):
        if args.only in (None, side):
            run_pytest(args.suite.resolve(), files, out / f"{side}.xml", hub, side == "kiln", args.keyword)
    if (out / "diffusers.xml").exists() and (out / "kiln.xml").exists():
        print(report(outcomes(out / "diffusers.xml"), outcomes(out / "kiln.xml")))


if __name__ == "__main__":
    main()
