"""The core (kerv_ros minus the ROS adapters) never imports rclpy."""

import pkgutil
import subprocess
import sys

import kerv_ros

ROS_ADAPTERS = {
    "kerv_ros.node",
    "kerv_ros.ros_io",
    "kerv_ros.sim.sim_node",
    "kerv_ros.sim.closed_loop",
    "kerv_ros.recording",
    "kerv_ros.msg",
}


def core_modules():
    names = []
    for info in pkgutil.walk_packages(kerv_ros.__path__, "kerv_ros."):
        if info.name.endswith(".__main__"):
            continue  # runs the tool when imported; its package is checked
        if not any(info.name == a or info.name.startswith(a + ".") for a in ROS_ADAPTERS):
            names.append(info.name)
    return names


def test_core_imports_without_rclpy():
    modules = core_modules()
    assert "kerv_ros.decoding.engine" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "roots = ('rclpy', 'rcl_interfaces')\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "print(leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
