#!/usr/bin/env bash
# Build msg/ with rosidl against the ROS 2 wheels in a virtual environment and
# install the generated message code into that environment's prefix.
# Usage: tools/build_msgs.sh VENV_DIR
set -euo pipefail
venv=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"

# The wheels' exported CMake files name the include dirs of the machine they were
# built on (/opt/python/cp311-cp311/...). Point them at this venv's Python and numpy.
pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')
for f in "$venv"/share/*/cmake/*__rosidl_generator_pyExport.cmake; do
  if grep -q '/opt/python/' "$f"; then
    sed -i -E "s#/opt/python/cp311-cp311/include/python3\.11#${pyinc}#g; s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_core/include#${npinc}#g" "$f"
  fi
done

build="$root/build/msgs"
mkdir -p "$build"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"
cmake -S "$root" -B "$build" -DKLTRACE_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" \
  -DCMAKE_INSTALL_RPATH="$venv/lib" -DCMAKE_BUILD_TYPE=Release >"$build/cmake.log" 2>&1 \
  || { tail -40 "$build/cmake.log"; echo "message build: cmake configure failed (log: $build/cmake.log)"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 \
  || { tail -40 "$build/build.log"; echo "message build failed (log: $build/build.log)"; exit 1; }
cmake --install "$build" >"$build/install.log" 2>&1 \
  || { tail -20 "$build/install.log"; echo "message install failed"; exit 1; }
# rosidl installs the generated code as a regular package "kltrace_ros" (an empty
# __init__.py plus egg-info). The real package is ours (installed by pip); keep the
# generated directory as a namespace portion that kltrace_ros/__init__.py adds to
# its __path__, and drop the duplicate distribution metadata.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/kltrace_ros/__init__.py"
rm -rf "$site"/kltrace_ros-*.egg-info
echo "messages installed into $venv"
