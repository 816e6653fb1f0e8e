"""``kerv record`` and ``kerv replay``: live topics into rosbag2, and bags back into the graph.

Recording uses raw subscriptions (the serialised CDR bytes go to the bag untouched, as
``ros2 bag record`` does), so a bag plays in ``ros2 bag play`` on a full ROS 2 install and reads
in ``kerv eval`` like any other. Replay publishes a bag's messages as raw bytes with their
recorded timing (rate factor, loop, start offset), for machines without ``ros2 bag play``.

This module is a ROS adapter (it needs rclpy); the core never imports it.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions

from kerv_ros import bags, loopback

log = logging.getLogger(__name__)

NODE_TOPICS = {
    bags.IMAGE_TOPIC: bags.IMAGE,
    bags.JOINT_STATES_TOPIC: bags.JOINT_STATE,
    bags.INSTRUCTION_TOPIC: bags.STRING,
    bags.TWIST_TOPIC: bags.TWIST_STAMPED,
    bags.GRIPPER_TOPIC: bags.FLOAT64,
    bags.DECODE_STATS_TOPIC: bags.DECODE_STATS,
}
"""kerv_node's inputs and outputs: what ``kerv record`` records by default."""
SENSOR_TOPICS = (bags.IMAGE_TOPIC, bags.JOINT_STATES_TOPIC, bags.INSTRUCTION_TOPIC)
"""What ``kerv replay`` plays by default: the node's inputs (its outputs come from the node)."""
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _join_graph() -> None:
    """Loopback-only DDS, in the user's domain.

    ROS's default 0 when ROS_DOMAIN_ID is unset: a random one, as the simulator's own
    processes get, would never meet the arm's nodes.
    """
    loopback.apply(int(os.environ.get("ROS_DOMAIN_ID") or 0))


def _stop_on_signals() -> threading.Event:
    """Ctrl-C and SIGTERM end a recording or a replay cleanly (the bag is closed).

    Handled here, not by rclpy (whose shutdown of the context under a spin surfaced as 'failed
    to initialize wait set'), and not as KeyboardInterrupt, which Python never raises in a
    process started with SIGINT ignored (a background job's child).
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def message_class(msgtype: str):
    """``pkg/msg/Type`` -> the rclpy message class (the package must be importable)."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"message type {msgtype} is not installed here: {err}") from err


def _qos(topic: str) -> QoSProfile:
    """The subscription QoS of a topic.

    Sensor streams best effort (it matches any publisher), the instruction latched, the rest
    reliable as kerv_node publishes them.
    """
    if topic == bags.INSTRUCTION_TOPIC:
        return LATCHED
    if topic in NODE_TOPICS and topic not in SENSOR_TOPICS:
        return RELIABLE
    return qos_profile_sensor_data


def subscribe_raw(node, types: dict[str, str], callback) -> None:
    """Raw subscriptions to ``types`` (topic -> type); ``callback(topic, msgtype, raw)``."""
    for topic, msgtype in types.items():
        node.create_subscription(
            message_class(msgtype),
            topic,
            lambda raw, topic=topic, msgtype=msgtype: callback(topic, msgtype, raw),
            _qos(topic),
            raw=True,
        )


def _offered_qos(node, topic: str) -> QoSProfile | None:
    """A subscription QoS that matches every publisher now on ``topic``; None if there is none.

    As ``ros2 bag record`` adapts: reliable (transient local) only when every publisher offers
    it, so a reliable source (a replay, kerv_node's outputs) is recorded without loss and a
    best-effort camera still matches.
    """
    offered = [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]
    if not offered:
        return None
    reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        depth=50,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def _subscribe_when_published(node, pending: dict[str, str | None], callback) -> None:
    """Subscribe raw to each topic of ``pending`` (topic -> type or None) that has a publisher.

    Called on every spin: a topic is subscribed when its first publisher appears, with that
    publisher's QoS and, for topics kerv_node does not own, the type the graph reports.
    """
    untyped = any(msgtype is None for msgtype in pending.values())
    graph_types = dict(node.get_topic_names_and_types()) if untyped else {}
    for topic in list(pending):
        msgtype = pending[topic] or (graph_types.get(topic) or [None])[0]
        qos = _offered_qos(node, topic) if msgtype else None
        if qos is None:
            continue
        node.create_subscription(
            message_class(msgtype),
            topic,
            lambda raw, topic=topic, msgtype=msgtype: callback(topic, msgtype, raw),
            qos,
            raw=True,
        )
        del pending[topic]
        log.info(
            "recording %s (%s, %s)",
            topic,
            qos.reliability.name.lower(),
            qos.durability.name.lower(),
        )


def record(
    output: Path,
    topics: list[str],
    storage: str = "mcap",
    duration_s: float | None = None,
) -> dict[str, int]:
    """Record ``topics`` into a new bag until ``duration_s`` passes or Ctrl-C; message counts.

    Topics are subscribed as their publishers appear (before that, nothing could be received),
    so the recorder may be started before the node, a replay or the camera.
    """
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new bag path")
    counts = {topic: 0 for topic in topics}
    _join_graph()
    stop = _stop_on_signals()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("kerv_record")
    writer = None
    try:
        writer = bags.BagWriter(output, storage).__enter__()

        def on_message(topic: str, msgtype: str, raw: bytes) -> None:
            writer.write_raw(topic, msgtype, time.time_ns(), raw)
            counts[topic] += 1

        pending = {topic: NODE_TOPICS.get(topic) for topic in topics}
        log.info("recording into %s: %s", output, ", ".join(topics))
        end = time.monotonic() + duration_s if duration_s else None
        while not stop.is_set() and (end is None or time.monotonic() < end):
            if pending:
                _subscribe_when_published(node, pending, on_message)
            rclpy.spin_once(node, timeout_sec=0.1)
        if pending:
            log.warning("no publisher seen on %s: nothing recorded there", ", ".join(pending))
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
        node.destroy_node()
        rclpy.try_shutdown()
    return counts


def replay(
    path: Path,
    topics: list[str] | None = None,
    rate: float = 1.0,
    loop: bool = False,
    start_s: float = 0.0,
    progress: bool = True,
    wait_s: float = 5.0,
    restamp: bool = True,
) -> int:
    """Publish ``topics`` of the bag (default: the node's inputs) with their timing.

    ``restamp``: messages with a header go out stamped now, as from a live camera and arm (the
    node and MoveIt Servo refuse readings stamped far from their clock); False keeps the
    recorded stamps (then run the node with ``stamp_tolerance_s:=0``).
    """
    from rosbags.rosbag2 import Reader
    from tqdm import tqdm

    if rate <= 0:
        raise ValueError(f"--rate must be positive, got {rate}")
    with Reader(path) as reader:
        present = {c.topic: c.msgtype for c in reader.connections}
        wanted = [t for t in (topics or SENSOR_TOPICS) if t in present]
        missing = sorted(set(topics or []) - set(present))
        if missing:
            raise ValueError(f"{path}: bag lacks topic(s) {', '.join(missing)}")
        if not wanted:
            raise ValueError(f"{path}: none of {', '.join(topics or SENSOR_TOPICS)} in the bag")
        connections = [c for c in reader.connections if c.topic in wanted]
        messages = [(t, c.topic, raw) for c, t, raw in reader.messages(connections=connections)]
    first = messages[0][0] + int(start_s * 1e9)
    messages = [m for m in messages if m[0] >= first]
    if not messages:
        raise ValueError(f"{path}: nothing after --start {start_s} s")
    _join_graph()
    stop = _stop_on_signals()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("kerv_replay")
    # Reliable, whatever the source offered: a reliable writer still serves best-effort
    # readers (the node's sensor subscriptions), and a recorder of the replay misses nothing.
    publishers = {
        t: node.create_publisher(
            message_class(present[t]), t, LATCHED if t == bags.INSTRUCTION_TOPIC else RELIABLE
        )
        for t in wanted
    }
    stamped = {
        t: message_class(present[t])
        for t in wanted
        if hasattr(message_class(present[t])(), "header")
    }
    # Give subscribers (the node, a recorder) a moment to be discovered: sensor topics are
    # volatile, so whatever goes out before they match is lost to them.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(
        p.get_subscription_count() for p in publishers.values()
    ):
        if stop.wait(0.05):
            break
    sent = 0
    try:
        while not stop.is_set():
            begin = time.monotonic()
            for stamp, topic, raw in tqdm(
                messages, desc="replay", unit="msg", disable=not progress
            ):
                delay = begin + (stamp - first) / 1e9 / rate - time.monotonic()
                if (delay > 0 and stop.wait(delay)) or stop.is_set():
                    break
                if restamp and topic in stamped:
                    msg = deserialize_message(raw, stamped[topic])
                    msg.header.stamp = node.get_clock().now().to_msg()
                    publishers[topic].publish(msg)
                else:
                    publishers[topic].publish(raw)
                sent += 1
            if not loop:
                break
        stop.wait(0.5)  # let the last messages leave before the node goes
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return sent
