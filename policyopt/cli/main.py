"""``policyopt`` entry point.

Each sub-command lives in its own module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``. Bad input (:class:`~policyopt.errors.UserError`) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from policyopt.errors import NonFiniteLoss, UserError

COMMANDS = ["train", "eval", "list", "bench", "report"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        sys.stderr.write(f"policyopt: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="policyopt", description="Policy optimization for control and language models.")
    from policyopt import __version__

    parser.add_argument("--version", action="version", version=f"policyopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"policyopt.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"policyopt.cli.{name}_cmd":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        sys.stderr.write(f"policyopt: error: {e}\n")
        return 2
    except NonFiniteLoss as e:
        sys.stderr.write(f"policyopt: training stopped: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("policyopt: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
