#!/usr/bin/env bash
# Rewrite the Python include paths that the ROS 2 PyPI wheels hard-code in their CMake export
# files (DESIGN.md 3) to those of the interpreter of the given venv.
#
# The wheels are built under manylinux, so every `export_<pkg>__rosidl_generator_pyExport.cmake`
# sets INTERFACE_INCLUDE_DIRECTORIES to `/opt/python/cp311-cp311/include/python3.11` and
# `/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include`, which do not exist
# here; any CMake build of messages that depend on those packages (std_msgs, ...) then fails.
#
# Usage: tools/fix_wheel_cmake.sh [VENV]     (default: .venv)
# Idempotent: files are only touched while they still hold a foreign path, so a second run
# changes nothing (and does not make CMake re-configure).
# Can also be sourced; it then only defines fix_wheel_cmake().
set -euo pipefail

# Prefix of the interpreter the wheels were built with (manylinux image).
FOREIGN_PY_PREFIX_RE='/opt/python/cp3[0-9]+-cp3[0-9]+t?'

fix_wheel_cmake() {
  local venv="${1:-.venv}"
  local py="$venv/bin/python"
  if [[ ! -x "$py" ]]; then
    echo "fix_wheel_cmake: no interpreter at $py" >&2
    return 1
  fi
  local py_inc np_inc
  py_inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$py" -c 'import numpy; print(numpy.get_include())')"
  if [[ ! -f "$py_inc/Python.h" ]]; then
    echo "fix_wheel_cmake: $py_inc/Python.h not found (Python headers missing)" >&2
    return 1
  fi
  local files=()
  mapfile -t files < <(grep -rlE --include='*.cmake' "$FOREIGN_PY_PREFIX_RE/" \
    "$venv/share" "$venv/lib/cmake" 2>/dev/null || true)
  local f n=0
  for f in "${files[@]}"; do
    [[ -n "$f" ]] || continue
    sed -E -i \
      -e "s#$FOREIGN_PY_PREFIX_RE/lib/python3\.[0-9]+t?/site-packages/numpy/(_core|core)/include#$np_inc#g" \
      -e "s#$FOREIGN_PY_PREFIX_RE/include/python3\.[0-9]+t?#$py_inc#g" \
      "$f"
    n=$((n + 1))
  done
  # Anything left under the foreign prefix would still break the build: say so.
  local left
  left="$(grep -rlE --include='*.cmake' "$FOREIGN_PY_PREFIX_RE/(include|lib)" \
    "$venv/share" "$venv/lib/cmake" 2>/dev/null || true)"
  if [[ -n "$left" ]]; then
    echo "fix_wheel_cmake: foreign paths remain in:" >&2
    echo "$left" >&2
    return 1
  fi
  if ((n > 0)); then
    echo "fix_wheel_cmake: rewrote $n CMake file(s) in $venv to $py_inc and $np_inc"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  fix_wheel_cmake "${1:-.venv}"
fi
