"""``kerv record`` and ``kerv replay``: live topics into rosbag2, and bags back into the graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from kerv_ros.cli.common import comma_list


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record kerv_node's inputs and outputs from live topics into rosbag2",
        description="Raw subscriptions to the topics (default: camera, joint states, "
        "instruction, twist, gripper, decode stats) written to a rosbag2 that ros2 bag play "
        "and kerv eval read. Stops on Ctrl-C or after --duration.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="new bag directory")
    p.add_argument("--topics", help="comma list of topics (default: kerv_node's)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    p.set_defaults(func=run_record)
    p = sub.add_parser(
        "replay",
        help="play a bag's sensor topics into the live graph with their timing",
        description="For machines without ros2 bag play: publishes the bag's messages (default: "
        "camera, joint states, instruction) as recorded, scaled by --rate.",
    )
    p.add_argument("bag", type=Path)
    p.add_argument("--topics", help="comma list of topics (default: the node's inputs)")
    p.add_argument("--rate", type=float, default=1.0, help="time factor (2 = twice as fast)")
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the bag to start at")
    p.add_argument(
        "--keep-stamps",
        action="store_true",
        help="publish the recorded header stamps (default: stamped now, as live sensors; a "
        "node fed recorded stamps needs stamp_tolerance_s:=0)",
    )
    p.set_defaults(func=run_replay)


def run_record(args: argparse.Namespace) -> int:
    from kerv_ros.recording import NODE_TOPICS, record

    topics = comma_list(args.topics) or list(NODE_TOPICS)
    counts = record(args.output, topics, args.storage, args.duration)
    print(f"wrote {args.output}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from kerv_ros.recording import replay

    topics = comma_list(args.topics) or None
    sent = replay(args.bag, topics, args.rate, args.loop, args.start, restamp=not args.keep_stamps)
    print(f"replayed {sent} messages from {args.bag}")
    return 0
