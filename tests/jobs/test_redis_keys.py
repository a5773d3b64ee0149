"""`shared.redis_keys`: the key names are stored data, so each is pinned here exactly as Kiln
has always written it, and the modules that write Redis are checked to use the builder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.redis_keys import RedisKeys

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, expected", [
    (lambda k: k.job("j1"), "p:job:j1"),
    (lambda k: k.lease("j1"), "p:lease:j1"),
    (lambda k: k.events("j1"), "p:events:j1"),
    (lambda k: k.events_pattern, "p:events:*"),
    (lambda k: k.all_jobs, "p:jobs:all"),
    (lambda k: k.status_index("queued"), "p:jobs:status:queued"),
    (lambda k: k.owner_index("ann"), "p:jobs:owner:ann"),
    (lambda k: k.job_indexes_pattern, "p:jobs:*"),
    (lambda k: k.api_key("key_1"), "p:key:key_1"),
    (lambda k: k.api_key_by_hash("ab"), "p:keyhash:ab"),
    (lambda k: k.api_keys, "p:keys"),
    (lambda k: k.bucket("key_1"), "p:bucket:key_1"),
    (lambda k: k.active("key_1"), "p:active:key_1"),
    (lambda k: k.streams("key_1"), "p:streams:key_1"),
    (lambda k: k.idempotency("key_1", "ab"), "p:idem:key_1:ab"),
    (lambda k: k.fair_queues, "p:fair:queues"),
    (lambda k: k.fair_ring("kiln.default"), "p:fair:kiln.default:ring"),
    (lambda k: k.fair_wait("kiln.default", "key_1"), "p:fair:kiln.default:wait:key_1"),
    (lambda k: k.fair_inflight, "p:fair:inflight"),
    (lambda k: k.fair_inflight_queue, "p:fair:inflight:queue"),
    (lambda k: k.webhooks_watch, "p:webhooks:watch"),
    (lambda k: k.webhooks_due, "p:webhooks:due"),
    (lambda k: k.webhook_sent("j1", "job.failed"), "p:webhook:sent:j1:job.failed"),
    (lambda k: k.webhook_log("j1"), "p:webhook:log:j1"),
    (lambda k: k.worker("w1"), "p:worker:w1"),
    (lambda k: k.workers, "p:workers"),
    (lambda k: k.admin_secret, "p:admin:secret_key"),
    (lambda k: k.admin_session("s1"), "p:admin:session:s1"),
])
def test_key_names_are_the_ones_already_stored(name, expected):
    assert name(RedisKeys("p")) == expected


def test_stems_prefix_the_names_built_from_them():
    keys = RedisKeys("p")
    assert keys.job("j1") == keys.job_stem + "j1"
    assert keys.status_index("failed") == keys.status_stem + "failed"
    assert keys.fair_wait("q", "key_1") == keys.fair_wait_stem("q") + "key_1"


# Modules that read or write Kiln's own keys: none may spell a key name itself.
WRITERS = ["shared/jobs/store.py", "shared/jobs/query.py", "shared/jobs/scripts.py", "shared/dispatcher.py",
           "shared/webhooks.py", "shared/fairqueue.py", "shared/idempotency.py", "shared/ratelimit.py",
           "shared/auth.py", "shared/workers.py", "shared/metrics.py", "api/eventhub.py",
           "api/admin/session.py", "api/admin/jobs.py", "api/blueprints/jobs.py"]
SPELLINGS = (":job:", ":jobs:", ":lease:", ":events:", ":key:", ":keyhash:", ":keys", ":bucket:", ":active:",
             ":streams:", ":idem:", ":fair:", ":webhook", ":worker", ":admin:")


def docstrings(tree: ast.Module) -> set[int]:
    """The ids of docstring nodes: they may describe the layout."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


@pytest.mark.parametrize("path", WRITERS)
def test_writers_take_key_names_from_the_builder(path):
    """No string literal (Lua scripts included) spells a key name; f-strings' parts count too."""
    tree = ast.parse((ROOT / path).read_text())
    skip = docstrings(tree)
    spelled = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in skip
               and isinstance(node.value, str) and any(s in node.value for s in SPELLINGS)]
    assert spelled == [], f"{path} spells key names itself: {spelled}"
