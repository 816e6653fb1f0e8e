"""rosbag2 reading and writing with rosbags (no ROS runtime needed).

Topic names and types are those of a real recording on an arm running kerv_node, so every tool
that reads the simulator's bags reads real-robot bags too. Messages are serialised with the
rosbags typestore (ROS 2 Kilted definitions plus the package's own DecodeStats): bytes from
rclpy's ``serialize_message`` of messages with empty arrays are not always accepted by rosbags
(DESIGN.md 3), the typestore's always are, and ``ros2 bag`` reads both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

IMAGE_TOPIC = "/camera/image_raw"
JOINT_STATES_TOPIC = "/joint_states"
INSTRUCTION_TOPIC = "/kerv_node/instruction"
TWIST_TOPIC = "/kerv_node/delta_twist_cmds"
GRIPPER_TOPIC = "/kerv_node/gripper_command"
DECODE_STATS_TOPIC = "/kerv_node/decode_stats"
SUCCESS_TOPIC = "/kerv_sim/success"

IMAGE = "sensor_msgs/msg/Image"
JOINT_STATE = "sensor_msgs/msg/JointState"
STRING = "std_msgs/msg/String"
FLOAT64 = "std_msgs/msg/Float64"
BOOL = "std_msgs/msg/Bool"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
DECODE_STATS = "kerv_ros/msg/DecodeStats"


def bag_paths(paths: list[Path]) -> list[Path]:
    """Bags named directly, or every bag (a directory with metadata.yaml) below a directory."""
    found = []
    for path in map(Path, paths):
        if (path / "metadata.yaml").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob("*/metadata.yaml")))
        else:
            raise FileNotFoundError(f"not a rosbag2 directory or a folder of them: {path}")
    if not found:
        raise FileNotFoundError(f"no rosbag2 bags in {', '.join(map(str, paths))}")
    return found


class BagError(ValueError):
    """A bag that cannot be read as a recording of kerv_node's topics (the message says why)."""


@dataclass(frozen=True)
class Message:
    """One recorded message on the recording's alignment clock.

    ``t`` (ns) is the header stamp where the message has one; a message without a header
    (instruction, gripper command) is placed on the same clock by its receive time less the
    receive delay of the stamped message received just before it. So a bag whose sensors
    stamp on another clock than the recorder's (a replay with its recorded stamps, a camera
    stamping from its own clock) pairs its messages as the live node paired them.
    """

    t: int
    received: int
    msg: Any


class Stream:
    """One topic's messages in alignment-clock order, with the lookups every reader needs."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = sorted(messages, key=lambda m: m.t)
        self.times = np.array([m.t for m in self.messages], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self):
        return iter(self.messages)

    def at(self, t: int) -> Message | None:
        """The message in force at ``t``: the newest at or before it, or None."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return self.messages[i] if i >= 0 else None

    def first_from(self, start: int, stop: int) -> Message | None:
        """The first message in [start, stop), or None."""
        i = int(np.searchsorted(self.times, start, side="left"))
        return self.messages[i] if i < len(self) and self.times[i] < stop else None


def read_streams(
    path: Path, topics: Mapping[str, str], required: Iterable[str] = ()
) -> dict[str, Stream]:
    """The messages of ``topics`` (topic -> expected type) in ``path``, deserialised, aligned.

    Every reader of recordings (training, the datastore builder, offline evaluation) goes
    through here, so a bag pairs the same way for all of them. Topics absent from the bag get
    an empty stream; a ``required`` one absent, a topic of another type, or an unreadable bag
    raise :class:`BagError` naming the bag.
    """
    from rosbags.rosbag2 import Reader

    store = typestore()
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises several types for unreadable metadata/storage
        raise BagError(f"{path}: cannot open the bag: {type(err).__name__}: {err}") from err
    try:
        present = {c.topic: c.msgtype for c in reader.connections}
        missing = sorted(set(required) - set(present))
        if missing:
            raise BagError(f"{path}: bag lacks topic(s) {', '.join(missing)}")
        for topic, msgtype in present.items():
            if topic in topics and msgtype != topics[topic]:
                expected = topics[topic]
                raise BagError(f"{path}: topic {topic} has type {msgtype}, expected {expected}")
            if topic in topics and msgtype not in store.types:
                raise BagError(f"{path}: topic {topic} has unknown message type {msgtype}")
        connections = [c for c in reader.connections if c.topic in topics]
        raw = []
        try:
            for connection, received, data in reader.messages(connections=connections):
                msg = store.deserialize_cdr(data, connection.msgtype)
                raw.append((connection.topic, received, msg))
        except Exception as err:  # a corrupt chunk or message surfaces here
            raise BagError(
                f"{path}: cannot read its messages (corrupt?): {type(err).__name__}: {err}"
            ) from err
    finally:
        reader.close()
    return _align(raw, topics)


def _align(raw: list[tuple[str, int, Any]], topics: Iterable[str]) -> dict[str, Stream]:
    """Messages in receive order -> streams on the header clock (see :class:`Message`)."""
    items = sorted(((t, r, m, _stamp_ns(m)) for t, r, m in raw), key=lambda item: item[1])
    # Before the first stamped message, unstamped ones take its delay.
    delay = next((r - s for _, r, _, s in items if s is not None), 0)
    out: dict[str, list[Message]] = {topic: [] for topic in topics}
    for topic, received, msg, stamp in items:
        if stamp is not None:
            delay = received - stamp
        out[topic].append(Message(received - delay if stamp is None else stamp, received, msg))
    return {topic: Stream(messages) for topic, messages in out.items()}


def _stamp_ns(msg) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def command_stream(streams: Mapping[str, Stream], period_s: float) -> Stream:
    """Each recorded twist as the raw 7-D action it amounts to (``Message.msg``), in time order.

    Its gripper opening is the last gripper command before the next twist: kerv_node publishes
    the gripper just after the twist of the same step (the simulator writes both at one time),
    and before any, the gripper is open.
    """
    twists = streams[TWIST_TOPIC]
    grippers = streams.get(GRIPPER_TOPIC) or Stream([])
    commands = []
    for i, twist in enumerate(twists):
        end = twists.times[i + 1] - 1 if i + 1 < len(twists) else np.iinfo(np.int64).max
        gripper = grippers.at(end)
        opening = gripper.msg.data if gripper is not None else 1.0
        action = np.array(command_action(twist.msg, opening, period_s))
        commands.append(Message(twist.t, twist.received, action))
    return Stream(commands)


def custom_data(path: Path) -> dict:
    """The bag's rosbag2 ``custom_data`` (the simulator stores task, seed and outcome there)."""
    import yaml

    info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return dict(info.get("custom_data") or {})


def failed_demonstration(meta: dict) -> bool:
    """A demonstrator that failed: its commands are not worth learning or retrieving.

    In a DAgger bag another driver failed, and the expert's labels still are worth it.
    """
    return meta.get("kerv.success") == "False" and meta.get("kerv.driver", "expert") == "expert"


def command_action(twist, gripper: float, period_s: float) -> list[float]:
    """A recorded command as the 7-D action that would produce it.

    The twist's end-effector delta over one control period (m, rad), then the gripper opening.
    """
    t = twist.twist
    linear = [t.linear.x, t.linear.y, t.linear.z]
    angular = [t.angular.x, t.angular.y, t.angular.z]
    return [v * period_s for v in linear + angular] + [gripper]


def _msg_file() -> Path:
    source = Path(__file__).resolve().parents[1] / "msg" / "DecodeStats.msg"
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("kerv_ros")) / "msg" / "DecodeStats.msg"


@cache
def typestore():
    """ROS 2 Kilted message types plus kerv_ros/msg/DecodeStats."""
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(_msg_file().read_text(encoding="utf-8"), DECODE_STATS))
    return store


def _types():
    return typestore().types


def header(stamp_ns: int, frame_id: str = ""):
    t = _types()
    stamp = t["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera"):
    height, width = rgb.shape[:2]
    return _types()[IMAGE](
        header=header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=width * 3,
        data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1),
    )


def joint_state_msg(names, positions, velocities, stamp_ns: int):
    return _types()[JOINT_STATE](
        header=header(stamp_ns),
        name=list(names),
        position=np.asarray(positions, dtype=np.float64),
        velocity=np.asarray(velocities, dtype=np.float64),
        effort=np.zeros(0),
    )


def twist_msg(linear, angular, stamp_ns: int, frame_id: str):
    t = _types()
    vector = t["geometry_msgs/msg/Vector3"]
    twist = t["geometry_msgs/msg/Twist"](
        linear=vector(*map(float, linear)), angular=vector(*map(float, angular))
    )
    return t[TWIST_STAMPED](header=header(stamp_ns, frame_id), twist=twist)


def scalar_msg(msgtype: str, value):
    return _types()[msgtype](data=value)


class BagWriter:
    """A rosbag2 writer (mcap by default) that serialises typestore messages on write."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage {storage!r} not one of {', '.join(plugins)}")
        self.path = Path(path)
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        self._connections: dict[str, object] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def set_metadata(self, key: str, value: str) -> None:
        """rosbag2 ``custom_data``: kept in the bag's metadata.yaml."""
        self._writer.set_custom_data(key, value)

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        """Serialise a typestore message and write it."""
        self.write_raw(topic, msgtype, stamp_ns, typestore().serialize_cdr(msg, msgtype))

    def write_raw(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> None:
        """Write CDR bytes as received (an rclpy raw subscription records cleanly)."""
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore()
            )
        self._writer.write(self._connections[topic], stamp_ns, data)
