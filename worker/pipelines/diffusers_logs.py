"""The logger names Kiln's pipelines share with Diffusers.

Kiln reports the events Diffusers reports — each component loaded by `from_pretrained`, a prompt cut
at the text encoder's length — on the logger names Diffusers uses for them. Code written for Diffusers
that tunes or watches those loggers (`diffusers.utils.logging.set_verbosity_error()`, a handler on
`diffusers.pipelines.pipeline_utils`) then sees Kiln's messages too. Plain `logging`: diffusers is
not imported, and without it the records go to the root logger as any other.
"""

from __future__ import annotations

import logging

# `DiffusionPipeline.from_pretrained` reports each loaded component here (INFO).
LOADING = logging.getLogger("diffusers.pipelines.pipeline_utils")


def pipeline_logger(diffusers_module: str) -> logging.Logger:
    """The logger of Diffusers' module `diffusers.pipelines.<diffusers_module>` (prompt truncation)."""
    return logging.getLogger(f"diffusers.pipelines.{diffusers_module}")
