#!/usr/bin/env bash
# Put kerv_ros into VENV the way colcon installs a package, so that the README's ROS commands
# (`ros2 launch kerv_ros kerv.launch.py`, `ros2 run kerv_ros kerv_node`) run from the venv:
#   VENV/share/ament_index/resource_index/packages/kerv_ros   (the ament index marker)
#   VENV/share/kerv_ros/{package.xml,launch/*,config/*}        (links to this source tree)
#   VENV/lib/kerv_ros/{kerv_node,sim_node}                      (links to the console scripts)
# The pip install is editable, so the share files link to the sources too: an edit of a launch
# file or of config/kerv.yaml is what `ros2 launch` reads next time. Files are linked one by one
# (ros2 launch walks share/ without following directory links). Idempotent.
# Usage: tools/install_ros_layout.sh VENV
set -euo pipefail
[[ $# -eq 1 && -x $1/bin/python ]] || { echo "usage: $0 VENV" >&2; exit 2; }
venv=$(cd "$1" && pwd)
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pkg=kerv_ros
mkdir -p "$venv/share/ament_index/resource_index/packages" "$venv/share/$pkg" "$venv/lib/$pkg"
: >"$venv/share/ament_index/resource_index/packages/$pkg"
ln -sfn "$src/package.xml" "$venv/share/$pkg/package.xml"
for dir in launch config; do
  [[ -L $venv/share/$pkg/$dir ]] && rm "$venv/share/$pkg/$dir"
  mkdir -p "$venv/share/$pkg/$dir"
  find "$venv/share/$pkg/$dir" -maxdepth 1 -type l -delete
  for file in "$src/$dir"/*; do
    ln -sfn "$file" "$venv/share/$pkg/$dir/$(basename "$file")"
  done
done
for exe in kerv_node sim_node; do
  [[ -x $venv/bin/$exe ]] || { echo "install_ros_layout: $venv/bin/$exe missing" >&2; exit 1; }
  ln -sfn "$venv/bin/$exe" "$venv/lib/$pkg/$exe"
done
echo "install_ros_layout: $pkg in $venv (share/$pkg -> $src, lib/$pkg/{kerv_node,sim_node})"
