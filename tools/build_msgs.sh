#!/usr/bin/env bash
# Build the message types of msg/ (DecodeStats) with rosidl and install them into a venv that
# holds the ROS 2 Kilted wheels of requirements.txt (DESIGN.md 3).
#
# Usage: tools/build_msgs.sh [VENV]          (default: .venv)
#        tools/build_msgs.sh --fix-cmake-only [VENV]
#
# Afterwards, with nothing sourced and no extra variables,
#   VENV/bin/python -c "from kerv_ros.msg import DecodeStats"
# works, and rclpy can publish and subscribe the type. The generated Python half goes to
# VENV/lib/python3.X/site-packages/kerv_ros/{msg/,*.so} (no __init__.py there); the kerv_ros
# sources come from the editable install of this tree and find that half through the
# extend_path() in kerv_ros/__init__.py. The C libraries go to VENV/lib, which the wheels'
# bootstrapper puts on LD_LIBRARY_PATH.
#
# The build directory is build/msgs (KERV_MSGS_BUILD_DIR overrides it). Idempotent: a second
# run rebuilds nothing and takes about a second (the first about 10 s). Needs cmake >= 3.20 and
# a C/C++ compiler; uses Ninja when it is installed, make otherwise (KERV_CMAKE_GENERATOR
# overrides).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/fix_wheel_cmake.sh
source "$repo/tools/fix_wheel_cmake.sh"

fix_only=0
if [[ "${1:-}" == "--fix-cmake-only" ]]; then
  fix_only=1
  shift
fi
venv_arg="${1:-.venv}"
if [[ ! -x "$venv_arg/bin/python" ]]; then
  echo "build_msgs: $venv_arg is not a venv (no bin/python)" >&2
  exit 1
fi
venv="$(cd "$venv_arg" && pwd)"
py="$venv/bin/python"

fix_wheel_cmake "$venv"
if ((fix_only)); then
  exit 0
fi

build_dir="${KERV_MSGS_BUILD_DIR:-$repo/build/msgs}"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

if [[ -n "${KERV_CMAKE_GENERATOR:-}" ]]; then
  generator="$KERV_CMAKE_GENERATOR"
elif command -v ninja >/dev/null 2>&1; then
  generator="Ninja"
else
  generator="Unix Makefiles"
fi

# A build dir configured for another venv, source tree or generator is started afresh.
cache="$build_dir/CMakeCache.txt"
if [[ -f "$cache" ]]; then
  if ! grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$venv" "$cache" ||
    ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$repo" "$cache" ||
    ! grep -qxF "CMAKE_GENERATOR:INTERNAL=$generator" "$cache"; then
    rm -rf "$build_dir"
  fi
fi

(
  # Only the venv: an /opt/ros install sourced in this shell must not leak in.
  export AMENT_PREFIX_PATH="$venv"
  export CMAKE_PREFIX_PATH="$venv"
  unset COLCON_PREFIX_PATH AMENT_CMAKE_SYMLINK_INSTALL
  echo "build_msgs: building msg/ into $venv (build dir: $build_dir)"
  # Configure once; later builds re-run CMake by themselves when CMakeLists.txt changes. A
  # configure that failed half-way (no build files) is re-done.
  if [[ ! -f "$cache" || ! -f "$build_dir/cmake_install.cmake" ]]; then
    cmake -S "$repo" -B "$build_dir" -G "$generator" \
      -DKERV_MSGS_ONLY=ON \
      -DBUILD_TESTING=OFF \
      -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX="$venv" \
      -DPython3_EXECUTABLE="$py" \
      -DPython3_FIND_VIRTUALENV=ONLY \
      --log-level=WARNING >/dev/null
  fi
  log="$build_dir/build_msgs.log"
  if ! cmake --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)" >"$log" 2>&1 ||
    ! cmake --install "$build_dir" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "build_msgs: build failed (log: $log)" >&2
    exit 1
  fi
)

# Safety net (the CMake option already avoids both): the site-packages half must not carry an
# empty __init__.py (it would shadow the sources) nor a second kerv_ros distribution.
if [[ -f "$site/kerv_ros/__init__.py" && ! -s "$site/kerv_ros/__init__.py" ]]; then
  rm -f "$site/kerv_ros/__init__.py"
fi
rm -rf "$site"/kerv_ros-*-py*.egg-info

# Check: import and serialise with nothing sourced (from / so that the current directory does not
# put the sources on sys.path).
cd /
env -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH "$py" - "$repo" <<'PY'
import importlib.metadata
import os
import sys

repo = os.path.realpath(sys.argv[1])
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

import kerv_ros  # noqa: E402
from kerv_ros.msg import DecodeStats  # noqa: E402

m = DecodeStats()
m.mode = "ar"
m.tokens = [1, 2, 3]
data = serialize_message(m)
assert deserialize_message(data, DecodeStats) == m
src = getattr(kerv_ros, "__file__", None)
try:
    importlib.metadata.distribution("kerv_ros")
    installed = True
except importlib.metadata.PackageNotFoundError:
    installed = False
if src is None:
    if installed:
        sys.exit(
            "build_msgs: kerv_ros imports as a namespace package: the generated "
            "site-packages/kerv_ros shadows the editable install. Install this tree with "
            "`pip install -e . --config-settings editable_mode=compat` (or give setup.py "
            "package_dir={'': '.'}) so that it is on sys.path, not behind a meta-path finder."
        )
    where = "not pip-installed: only the generated messages are importable"
else:
    where = os.path.dirname(os.path.realpath(src))
    if not where.startswith(repo + os.sep):
        print(f"build_msgs: note: kerv_ros imports from {where}, not from {repo}")
print(f"build_msgs: kerv_ros.msg.DecodeStats OK ({len(data)} bytes serialised); kerv_ros: {where}")
PY
