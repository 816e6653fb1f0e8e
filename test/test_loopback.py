"""DDS stays on this machine: the environment is in force and rclpy talks over loopback only."""

import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import LOOPBACK_ENV

from kerv_ros import loopback

REPO = Path(__file__).resolve().parents[1]
NS = {"f": "http://www.eprosima.com"}


def test_environment_in_force():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]) == loopback.profile_path()
    assert os.environ["ROS_STATIC_PEERS"] == ""
    assert 0 <= int(os.environ["ROS_DOMAIN_ID"]) <= 101
    assert LOOPBACK_ENV["ROS_DOMAIN_ID"] == os.environ["ROS_DOMAIN_ID"]


def test_makefile_exports_the_same_environment():
    proc = subprocess.run(
        ["make", "-s", "ros-env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ROS_DOMAIN_ID": "77"},
    )
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    expected = loopback.loopback_env(77)
    assert env == expected


def test_profile_allows_only_shared_memory_and_loopback_udp():
    root = ET.parse(loopback.profile_path()).getroot()
    descriptors = {
        d.find("f:transport_id", NS).text: d for d in root.iterfind(".//f:transport_descriptor", NS)
    }
    participant = root.find(".//f:participant", NS)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("f:rtps", NS)
    assert rtps.find("f:useBuiltinTransports", NS).text == "false"
    used = [t.text for t in rtps.iterfind("f:userTransports/f:transport_id", NS)]
    kinds = sorted(descriptors[t].find("f:type", NS).text for t in used)
    assert kinds == ["SHM", "UDPv4"]
    for transport in used:
        descriptor = descriptors[transport]
        if descriptor.find("f:type", NS).text == "SHM":
            assert int(descriptor.find("f:segment_size", NS).text) >= 16 * 1024 * 1024
        else:
            allowed = [a.text for a in descriptor.iterfind("f:interfaceWhiteList/f:address", NS)]
            assert allowed == ["127.0.0.1"]


TALKER = """
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("kerv_smoke_talker")
pub = node.create_publisher(String, sys.argv[1], 10)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pub.publish(String(data="kerv smoke"))
    rclpy.spin_once(node, timeout_sec=0.05)
node.destroy_node()
rclpy.shutdown()
"""

LISTENER = """
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("kerv_smoke_listener")
got = []
node.create_subscription(String, sys.argv[1], lambda m: got.append(m.data), 10)
end = time.monotonic() + float(sys.argv[2])
while not got and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
print(got[0] if got else "nothing")
node.destroy_node()
rclpy.shutdown()
sys.exit(0 if got else 1)
"""

# Addresses a traced process sent to or connected to over IPv4/IPv6.
ADDRESS = re.compile(r'inet_addr\("([0-9.]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def test_rclpy_talks_across_processes_on_loopback_only(tmp_path):
    topic = f"/kerv_smoke_{uuid.uuid4().hex[:8]}"
    trace = tmp_path / "talker.strace"
    talker_cmd = [sys.executable, "-c", TALKER, topic, "15"]
    strace = shutil.which("strace")
    if strace:
        talker_cmd = [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=connect,sendto,sendmsg,sendmmsg",
            "-o",
            str(trace),
            *talker_cmd,
        ]
    talker = subprocess.Popen(talker_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        listener = subprocess.run(
            [sys.executable, "-c", LISTENER, topic, "30"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        talker.terminate()
        talker.wait(timeout=30)
    assert listener.returncode == 0, listener.stdout + listener.stderr
    assert listener.stdout.strip() == "kerv smoke"
    if not strace:
        pytest.skip("strace not installed: message delivery checked, destinations not traced")
    destinations = set()
    for line in trace.read_text().splitlines():
        for v4, v6 in ADDRESS.findall(line):
            destinations.add(v4 or v6)
    assert destinations, "the talker sent nothing over IP: the trace did not work"
    assert destinations <= {"127.0.0.1", "::1"}, destinations
