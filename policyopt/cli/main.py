"""``policyopt`` entry point.

Each sub-command lives in its own module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``. Bad input (:class:`~policyopt.errors.UserError`, argparse errors, arguments that are not
UTF-8) prints one line and exits 2; a file-system error that is not the input's fault (a full disk) prints one
line and exits 1. The current directory is importable, as with ``python -m``, so ``--env mymod:MyEnv`` and
``--set rewards.mymod:fn=1`` find ``./mymod.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from policyopt.errors import NonFiniteLoss, UserError

COMMANDS = ["train", "eval", "config", "list", "bench", "report"]


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


def _error(message: str, code: int) -> int:
    sys.stderr.write("policyopt: error: " + " ".join(message.split()) + "\n")
    return code


def _check_utf8(argv: list[str]) -> None:
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"argument {os.fsencode(a)!r} is not valid UTF-8; names and values must be UTF-8 "
                "(they are written into config.yaml and run.json)"
            ) from None


def _importable_cwd() -> None:
    """Put the current directory first on the module path, as ``python -m`` does."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_utf8(argv)
    except UserError as e:
        return _error(str(e), 2)
    _importable_cwd()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        return _error(str(e), 2)
    except NonFiniteLoss as e:
        sys.stderr.write(f"policyopt: training stopped: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("policyopt: interrupted\n")
        return 130
    except OSError as e:  # the machine, not the input: a full disk, a file removed under a running command
        where = f": {e.filename!r}" if e.filename else ""
        return _error(f"{e.strerror or type(e).__name__}{where}", 1)


if __name__ == "__main__":
    sys.exit(main())
