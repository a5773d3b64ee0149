"""docs/operations-deploy.md documents every setting, with its real default, in one table."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import REPO_ROOT, Settings
from tests.infra.test_k8s import ENV_BESIDE_SETTINGS

DOC = REPO_ROOT / "docs" / "operations-deploy.md"
ROW = re.compile(r"^\| `(KILN_[A-Z0-9_]+)` \| `([^`]*)` \| (.+) \|$")


def documented() -> dict[str, tuple[str, str]]:
    rows = [ROW.match(line) for line in DOC.read_text().splitlines()]
    return {m.group(1): (m.group(2), m.group(3)) for m in rows if m}


def as_documented(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return f"<repo>/{value.relative_to(REPO_ROOT)}" if value.is_relative_to(REPO_ROOT) else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_documented_with_its_default():
    table = documented()
    for name, field in Settings.model_fields.items():
        variable = f"KILN_{name.upper()}"
        assert variable in table, f"{variable} is missing from {DOC.name}'s settings table"
        default, meaning = table[variable]
        assert default == as_documented(field.default), f"{variable}: documented {default!r}"
        assert len(meaning) > 10


def test_the_table_documents_nothing_that_does_not_exist():
    known = {f"KILN_{name.upper()}" for name in Settings.model_fields} | ENV_BESIDE_SETTINGS | {"KILN_ENV_FILE"}
    assert set(documented()) - known == set()
