"""The `kiln` command line, on `kiln_client.Client`. Reads `KILN_URL` and `KILN_API_KEY`.

    kiln generate "a red circle" --wait -o out.png
    kiln jobs [--status running] [--limit 20]
    kiln get <job id> | kiln cancel <job id> | kiln download <job id> -o out.png
    kiln keys create --role user --name alice | kiln keys list | kiln keys revoke <key id>
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice

from kiln_client.client import Client, KilnAPIError

BAR_WIDTH = 30


def progress_bar(step: int, total: int, stream=None) -> None:
    stream = stream or sys.stderr
    done = int(BAR_WIDTH * step / total) if total else 0
    stream.write(f"\r[{'#' * done}{'.' * (BAR_WIDTH - done)}] {step}/{total}")
    stream.flush()


def _generate(client: Client, args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"prompt": args.prompt, "model": args.model, "steps": args.steps,
                                "seed": args.seed, "width": args.width, "height": args.height,
                                "num_images": args.num_images, "scheduler": args.scheduler,
                                "guidance_scale": args.guidance_scale}.items() if v is not None}
    if args.lora:
        params["loras"] = args.lora
    files = {}
    if args.image:
        files["image"] = open(args.image, "rb").read()
    job = client.submit(idempotency_key=args.idempotency_key, files=files or None, **params)
    print(job["id"], file=sys.stderr)
    if not (args.wait or args.output):
        print(json.dumps(job, indent=2))
        return 0
    job = client.wait(job["id"], timeout=args.timeout, on_progress=progress_bar)
    sys.stderr.write("\n")
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error')}", file=sys.stderr)
        return 1
    if args.output:
        outputs = job["outputs"]
        for output in outputs:
            path = args.output if len(outputs) == 1 else _numbered(args.output, output["index"])
            client.download(job["id"], output["index"], path)
            print(path)
    else:
        print(json.dumps(job, indent=2))
    return 0


def lora_arg(text: str) -> dict:
    """`NAME` or `NAME:SCALE` (scale 1.0 by default) -> the job's `{"name", "scale"}` entry."""
    name, _, scale = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"--lora wants NAME or NAME:SCALE, got {text!r}")
    try:
        return {"name": name, "scale": float(scale) if scale else 1.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora scale must be a number, got {scale!r}") from None


def _numbered(path: str, index: int) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{index}.{ext}" if dot else f"{path}-{index}"


def _jobs(client: Client, args: argparse.Namespace) -> int:
    for job in islice(client.list(status=args.status, model=args.model), args.limit):
        print(f"{job['id']}  {job['status']:<9}  {job['model']:<20}  {job['created_at']}")
    return 0


def _keys(client: Client, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        print(json.dumps(client.create_key(args.role, args.name, args.owner), indent=2))
    elif args.keys_command == "list":
        for key in client.list_keys():
            state = "revoked" if key["revoked_at"] else "active"
            print(f"{key['id']}  {key['role']:<5}  {state:<7}  {key['owner']:<22}  {key['name']}")
    else:
        print(json.dumps(client.revoke_key(args.key_id), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln API client")
    parser.add_argument("--url", help="API URL (default: $KILN_URL)")
    parser.add_argument("--api-key", help="API key (default: $KILN_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="submit a job")
    gen.add_argument("prompt", nargs="?")
    for name, kind in (("model", str), ("steps", int), ("seed", int), ("width", int), ("height", int),
                       ("num-images", int), ("scheduler", str), ("image", str), ("idempotency-key", str),
                       ("guidance-scale", float)):
        gen.add_argument(f"--{name}", type=kind)
    gen.add_argument("--lora", type=lora_arg, action="append",
                     help="a LoRA adapter from GET /v1/loras, NAME or NAME:SCALE; repeat for several")
    gen.add_argument("--wait", action="store_true", help="wait, showing progress")
    gen.add_argument("-o", "--output", help="write the image here (implies --wait)")
    gen.add_argument("--timeout", type=float, default=600)
    jobs = sub.add_parser("jobs", help="list your jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--model")
    jobs.add_argument("--limit", type=int, default=20)
    for name in ("get", "cancel"):
        sub.add_parser(name).add_argument("job_id")
    download = sub.add_parser("download")
    download.add_argument("job_id")
    download.add_argument("--index", type=int, default=0)
    download.add_argument("-o", "--output", required=True)
    keys = sub.add_parser("keys", help="manage API keys (admin)").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create")
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--name", default="")
    create.add_argument("--owner")
    keys.add_parser("list")
    keys.add_parser("revoke").add_argument("key_id")
    return parser


COMMANDS = {
    "generate": _generate,
    "jobs": _jobs,
    "keys": _keys,
    "get": lambda c, a: print(json.dumps(c.get(a.job_id), indent=2)) or 0,
    "cancel": lambda c, a: print(json.dumps(c.cancel(a.job_id), indent=2)) or 0,
    "download": lambda c, a: (c.download(a.job_id, a.index, a.output), print(a.output))[1] or 0,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.url, args.api_key)
    try:
        return COMMANDS[args.command](client, args)
    except KilnAPIError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
