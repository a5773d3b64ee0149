"""A base class's family, read from Python's own record of subclasses.

A base class that must know its family (a scheduler's compatible classes, the pipeline class a
`model_index.json` names) cannot import the modules that define the family: they import the base.
Python already keeps the list (`type.__subclasses__`), filled as each module is defined, and the
package `__init__` defines them all before anyone can call the base. So the base reads that list
at call time, and the explicit registries (`SCHEDULER_CLASSES`, `TASK_PIPELINES`) stay where they
import the classes, with no import circle between them and the base.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)


def subclasses_in(base: T, package: str) -> dict[str, T]:
    """Every class derived from `base` (at any depth) that a module of `package` defines, by name.

    Classes defined elsewhere (tests, community pipeline files, user code) are left out, so a
    user's class never shadows one of Kiln's.
    """
    found: dict[str, T] = {}
    pending = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith(package + "."):
            found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found
