"""The ROS package is laid out as ROS users expect, and the code is lint clean."""

import configparser
import subprocess
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]


def test_package_xml():
    package = parse_package(REPO / "package.xml")
    assert package.name == "kerv_ros"
    assert package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    exec_deps = {d.name for d in package.exec_depends + package.build_export_depends}
    exec_deps |= {d.name for d in package.run_depends}
    assert {"rclpy", "sensor_msgs", "geometry_msgs", "rosidl_default_runtime"} <= exec_deps
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_layout_and_ros_run_directories():
    for path in (
        "setup.py",
        "setup.cfg",
        "CMakeLists.txt",
        "resource/kerv_ros",
        "msg",
        "config/kerv.yaml",
        "README.md",
        "Makefile",
        ".ci/run",
    ):
        assert (REPO / path).exists(), path
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/kerv_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/kerv_ros"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in readme
    assert "make test" in ci


def test_ruff_lint_and_format():
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run(
        [*ruff, "check", "."], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [*ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
