"""``handrail``: the command line. ``handrail demo`` runs the banking demo; ``handrail policy``
checks and explains policy files. Exit codes: 0 done, 2 refused (one line says why)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from handrail import demo
from handrail.context import Actor
from handrail.errors import HandrailError
from handrail.policies import Policy

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handrail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the banking demo (pause, resume in a new process)")
    p.add_argument("--db", type=Path, default=Path("handrail-demo.db"), help="SQLite file")
    p.add_argument("--resume", metavar="THREAD", help=argparse.SUPPRESS)

    p = sub.add_parser("policy", help="check or explain a policy file")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="parse and compile a policy; exit 2 naming what is wrong")
    c.add_argument("file", type=Path)
    e = psub.add_parser("explain", help="decide one call and show every rule's verdict")
    e.add_argument("file", type=Path)
    e.add_argument("--tool", required=True)
    e.add_argument("--args", default="{}", help="the call's arguments as JSON")
    e.add_argument("--actor", default="cli", help="the actor's id")
    e.add_argument("--role", action="append", default=[], help="an actor role (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.resume:
                return demo.resume(args.db, args.resume)
            return demo.run(args.db)
        policy = Policy.from_file(args.file)
        if args.policy_command == "check":
            print(f"{args.file}: ok, {len(policy.rules)} rule(s), default {policy.default}")
            return 0
        try:
            call_args = json.loads(args.args)
        except json.JSONDecodeError as exc:
            raise HandrailError(f"--args is not JSON: {exc}") from None
        if not isinstance(call_args, dict):
            raise HandrailError("--args must be a JSON object")
        actor = Actor(id=args.actor, roles=tuple(args.role))
        print(policy.explain(args.tool, call_args, actor))
        return 0
    except HandrailError as exc:
        print(f"handrail: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
