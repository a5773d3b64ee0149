"""Manage API keys straight in Redis, without a running API — the bootstrap path for the first
admin key:  `python -m api.keys create --role admin --name ops`  (prints the secret once),
`python -m api.keys list`, `python -m api.keys revoke <key id>`. Reads `KILN_REDIS_URL`."""

from __future__ import annotations

import argparse
import json
import sys

from shared.auth import key_store
from shared.errors import KilnError
from shared.settings import get_settings


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
    store = key_store(get_settings())
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
