"""Manage API keys straight in Redis, without a running API — the bootstrap path for the first
admin key:  `python -m api.keys create --role admin --name ops`  (prints the secret once),
`python -m api.keys list`, `python -m api.keys revoke <key id>`. Writes to the Redis of
`KILN_REDIS_URL` when set, else to the running local stack's (`make up` records it in
`var/localstack.json`), else to the default; it says which on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shared.auth import key_store
from shared.errors import KilnError
from shared.localstack import read_state, state_path
from shared.settings import Settings, get_settings, load_settings


def target_settings() -> tuple[Settings, str]:
    """The settings whose Redis the keys go to, and where that choice came from."""
    if os.environ.get("KILN_REDIS_URL"):
        return get_settings(), "KILN_REDIS_URL"
    state = read_state()
    if state is not None:
        return load_settings(redis_url=state["redis_url"]), f"the running local stack, {state_path()}"
    return get_settings(), "the default; no KILN_REDIS_URL and no running `make up`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print its secret")
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--name", default="")
    create.add_argument("--owner", default=None)
    sub.add_parser("list", help="list keys")
    revoke = sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    settings, source = target_settings()
    print(f"api.keys: Redis {settings.redis_url} ({source})", file=sys.stderr)
    store = key_store(settings)
    try:
        if args.command == "create":
            created = store.create(role=args.role, name=args.name, owner=args.owner)
            print(json.dumps({**created.key, "secret": created.secret}, indent=2))
        elif args.command == "list":
            print(json.dumps(store.list(), indent=2))
        else:
            print(json.dumps(store.revoke(args.key_id), indent=2))
    except KilnError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
