"""The environment that keeps DDS on this machine, in one place.

Every process that starts rclpy (the node, the simulator, tests, CI, the demo) runs with
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, kerv_ros's Fast DDS profile (shared memory +
UDPv4 on 127.0.0.1 only, builtin transports off), no static peers, and a ``ROS_DOMAIN_ID`` of
its run. The Makefile exports the same values; ``test/test_loopback.py`` checks they agree.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

PROFILE_NAME = "fastdds_loopback.xml"


def profile_path() -> Path:
    """The profile in the source tree, or in ``share/kerv_ros/config`` of an install."""
    source = Path(__file__).resolve().parents[1] / "config" / PROFILE_NAME
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("kerv_ros")) / "config" / PROFILE_NAME


def loopback_env(domain_id: int | None = None) -> dict[str, str]:
    """Variables to set; ``domain_id`` None keeps the caller's or draws one for this run."""
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID") or random.randint(1, 100))
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile_path()),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "ROS_STATIC_PEERS": "",
        "ROS_DOMAIN_ID": str(domain_id),
    }


def apply(domain_id: int | None = None) -> dict[str, str]:
    """Put :func:`loopback_env` into ``os.environ`` (before rclpy is imported) and return it."""
    env = loopback_env(domain_id)
    os.environ.update(env)
    return env
