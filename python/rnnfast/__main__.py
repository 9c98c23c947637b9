"""Command line of rnnfast: ``python -m rnnfast COMMAND [options]`` (``COMMAND --help`` for a command's options).

Each command is a function taking the arguments after its name and returning an exit status, registered with
``@command(name, help)``; it parses its own options, so a new command only adds one function here.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

PROG = "rnnfast"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[List[str]], int]


COMMANDS: Dict[str, Command] = {}


def command(name: str, help: str) -> Callable[[Callable[[List[str]], int]], Callable[[List[str]], int]]:
    """Register ``function(argv) -> exit status`` as the subcommand ``name``."""

    def register(function: Callable[[List[str]], int]) -> Callable[[List[str]], int]:
        COMMANDS[name] = Command(name, help, function)
        return function

    return register


@command("info", "version, compiler, Eigen version, SIMD instruction sets and threads of this build")
def _info(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} info",
        description="Print how rnnfast was built and how it will run (the same as rnnfast.show_config()).")
    parser.add_argument("--json", action="store_true", help="print the configuration as one JSON object")
    args = parser.parse_args(argv)
    from . import _config, show_config

    if args.json:
        import json

        print(json.dumps(_config(), indent=2))
    else:
        show_config()
    return 0


@command("demo", "train an RNN (or LSTM, GRU: --cell) to predict a noisy sine wave, against the repeat-last-value "
                 "baseline")
def _demo(argv: List[str]) -> int:
    from . import demo  # imported on use, like bench

    return demo.main(argv, prog=f"{PROG} demo")


@command("bench", "time rnnfast against the NumPy reference, PyTorch, ONNX Runtime and OpenVINO")
def _bench(argv: List[str]) -> int:
    from . import bench  # imported on use: the other commands need none of it

    return bench.main(argv, prog=f"{PROG} bench")


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {c.name:<10} {c.help}" for c in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="rnnfast: fast RNN, LSTM and GRU forward and backpropagation through time on the CPU.",
        epilog=f"commands:\n{listing}\n\n'{PROG} COMMAND --help' describes a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m rnnfast`` (and of an ``rnnfast`` console script): dispatch to a command."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not args or args[0].startswith("-"):
        parser.parse_args(args)  # --help / --version exit here; anything else is a usage error
        parser.error("expected a command")
    name = parser.parse_args(args[:1]).command  # rejects an unknown command with the list of known ones
    return COMMANDS[name].run(args[1:])


if __name__ == "__main__":
    sys.exit(main())
