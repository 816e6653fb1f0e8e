"""rosbag2 reading and writing with rosbags (no ROS runtime needed).

Topic names and types are those of a real recording on an arm running kerv_node, so every tool
that reads the simulator's bags reads real-robot bags too. Messages are serialised with the
rosbags typestore (ROS 2 Kilted definitions plus the package's own DecodeStats): bytes from
rclpy's ``serialize_message`` of messages with empty arrays are not always accepted by rosbags
(DESIGN.md 3), the typestore's always are, and ``ros2 bag`` reads both.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

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


def latest_index(stamps, t) -> int | None:
    """Index of the last stamp <= t (stamps sorted), or None: the message in force at t."""
    index = int(np.searchsorted(np.asarray(stamps), t, side="right")) - 1
    return index if index >= 0 else None


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
