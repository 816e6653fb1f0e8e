"""The package's own message type, kerv_ros/msg/DecodeStats (msg/DecodeStats.msg).

Needs the generated type: `tools/build_msgs.sh` (venv) or `colcon build` (workspace). Only
serialisation is exercised, which needs neither rclpy.init() nor any DDS traffic.
"""

import array
import dataclasses
import math
from pathlib import Path

import pytest

MSG_FILE = Path(__file__).resolve().parents[1] / "msg" / "DecodeStats.msg"
TYPE_NAME = "kerv_ros/msg/DecodeStats"


@pytest.fixture(scope="module")
def decode_stats():
    try:
        from kerv_ros.msg import DecodeStats
    except ImportError as exc:
        pytest.fail(
            f"kerv_ros.msg.DecodeStats does not import ({exc}); build it with "
            "`tools/build_msgs.sh .venv` (or `colcon build` in a workspace)",
            pytrace=False,
        )
    return DecodeStats


def _filled(cls):
    m = cls()
    m.header.stamp.sec = 1_700_000_000
    m.header.stamp.nanosec = 123_456_789
    m.header.frame_id = "base_link"
    m.mode = "kerv"
    m.tokens = [31872, 31800, 31999, 0, 255, 256, 2**31 - 1]
    m.token_sources = [
        cls.SOURCE_VERIFIER,
        cls.SOURCE_DRAFTER,
        cls.SOURCE_RETRIEVAL,
        cls.SOURCE_KALMAN,
        cls.SOURCE_DRAFTER,
        cls.SOURCE_DRAFTER,
        cls.SOURCE_VERIFIER,
    ]
    m.action = [-1.0, -0.5, 0.0, 0.25, 1.0 / 3.0, 0.999, 1.0]
    m.accepted_lengths = [3, 1, 3]
    m.target_forwards = 3
    m.draft_forwards = 7
    m.threshold = 2.0
    m.compensated_dims = [3, 6]
    m.verify_skipped = True
    m.prefill_ms = 12.5
    m.draft_ms = 3.25
    m.verify_ms = 20.125
    m.other_ms = 0.1
    m.total_ms = 35.975
    return m


def _plain(value):
    """A comparable Python value from an rclpy or a rosbags field value."""
    if hasattr(value, "tolist"):  # numpy array or scalar (rosbags)
        return value.tolist()
    if isinstance(value, (array.array, bytes, list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "get_fields_and_field_types"):  # rclpy message
        return {k: _plain(getattr(value, k)) for k in value.get_fields_and_field_types()}
    if dataclasses.is_dataclass(value):  # rosbags message
        # rosbags also lists the constants (upper case) and __msgtype__ as dataclass fields;
        # ROS field names are lower case.
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name.islower() and not f.name.startswith("__")
        }
    return value


def test_imports_from_kerv_ros_msg(decode_stats):
    assert decode_stats.__module__.startswith("kerv_ros.msg")
    assert decode_stats.__name__ == "DecodeStats"
    fields = decode_stats.get_fields_and_field_types()
    assert fields["header"] == "std_msgs/Header"
    assert fields["mode"] == "string"
    assert fields["tokens"] == "sequence<int32>"
    assert fields["token_sources"] == "sequence<uint8>"
    assert fields["action"] == "sequence<double>"
    assert fields["total_ms"] == "double"


def test_source_constants(decode_stats):
    assert decode_stats.SOURCE_VERIFIER == 0
    assert decode_stats.SOURCE_DRAFTER == 1
    assert decode_stats.SOURCE_RETRIEVAL == 2
    assert decode_stats.SOURCE_KALMAN == 3


def test_rclpy_serialisation_round_trip(decode_stats):
    from rclpy.serialization import deserialize_message, serialize_message

    m = _filled(decode_stats)
    data = serialize_message(m)
    back = deserialize_message(data, decode_stats)
    assert back == m
    assert _plain(back) == _plain(m)
    assert back.mode == "kerv"
    assert list(back.tokens) == [31872, 31800, 31999, 0, 255, 256, 2**31 - 1]
    assert math.isclose(back.action[4], 1.0 / 3.0, rel_tol=0, abs_tol=0)


@pytest.fixture(scope="module")
def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(MSG_FILE.read_text(), TYPE_NAME))
    return store


def test_rosbags_reads_rclpy_bytes(decode_stats, typestore):
    from rclpy.serialization import serialize_message

    m = _filled(decode_stats)
    data = serialize_message(m)
    got = typestore.deserialize_cdr(data, TYPE_NAME)
    assert _plain(got) == _plain(m)
    assert got.SOURCE_KALMAN == decode_stats.SOURCE_KALMAN == 3
    assert got.header.frame_id == "base_link"
    assert got.header.stamp.nanosec == 123_456_789


def test_rclpy_reads_rosbags_bytes(decode_stats, typestore):
    """Bags written with the typestore (the safe way, see below) read back in rclpy.

    rclpy's serialize_message of a DecodeStats whose arrays are all empty carries 8 trailing
    bytes that rosbags' deserialize_cdr rejects ("CDR message size mismatch", DESIGN.md 3), and
    CDR padding bytes are not zeroed by rclpy, so bytes are compared as messages, not as bytes.
    """
    from rclpy.serialization import deserialize_message, serialize_message

    filled = typestore.deserialize_cdr(serialize_message(_filled(decode_stats)), TYPE_NAME)
    empty_u8 = filled.token_sources[:0]
    empty = dataclasses.replace(
        filled,
        mode="",
        tokens=filled.tokens[:0],
        token_sources=empty_u8,
        action=filled.action[:0],
        accepted_lengths=empty_u8,
        compensated_dims=empty_u8,
    )
    for msg in (filled, empty):
        back = deserialize_message(bytes(typestore.serialize_cdr(msg, TYPE_NAME)), decode_stats)
        assert _plain(back) == _plain(msg)
    assert deserialize_message(
        bytes(typestore.serialize_cdr(filled, TYPE_NAME)), decode_stats
    ) == _filled(decode_stats)
