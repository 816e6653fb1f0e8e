"""The ``kerv`` command-line tool.

One module per command, each only parsing arguments and calling the library
(``kerv_ros.bench``, ``offline``, ``training``, ``retrieval``, ``recording``, ``sim``,
``calibration``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from kerv_ros.cli import bags, bench, datastore, dyq, evaluate, sim, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerv", description="kerv_ros command-line tool")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    sim.add_parser(sub)
    train.add_parser(sub)
    evaluate.add_parser(sub)
    datastore.add_parser(sub)
    datastore.add_drafter_parser(sub)
    dyq.add_parser(sub)
    bags.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    # ModelLoadError and BagError are ValueErrors; RuntimeError: a simulator run that failed.
    except (ValueError, OSError, RuntimeError) as err:
        print(f"kerv {args.command}: error: {err}", file=sys.stderr)
        return 2
