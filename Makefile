# kerv_ros on any Linux box with Python 3.11, with or without a ROS 2 install.
#   make demo   set up .venv if needed, then the simulated arm driven by the default policy in
#               separate processes (sim_node + kerv_node), in ar and in the fastest mode
#   make test   set up .venv if missing or stale, then run the test suite
#   make bench  kerv bench on a random model (speed of each decode mode vs ar)
#   make lint   ruff
# The venv holds the pinned requirements (ROS 2 Kilted wheels, torch CPU, ...), this package as
# an editable install, and the messages of msg/ built into it (tools/build_msgs.sh).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kerv-stamp
SETUP_INPUTS := requirements.txt setup.py setup.cfg package.xml CMakeLists.txt $(wildcard msg/*.msg) \
	tools/build_msgs.sh tools/fix_wheel_cmake.sh tools/install_ros_layout.sh \
	$(wildcard launch/*.py config/*)
# The upstream ROS 2 command-line tools (ros2 launch/param/lifecycle/topic/run) as wheels, from
# the workspace's shared bundle; without it the tests that drive the real `ros2` say they did
# not run. A real ROS 2 install's `ros2` on the PATH is used instead when there is one.
ROS2CLI_BUNDLE ?= $(firstword $(wildcard $(CURDIR)/../shared/ros2cli /work/shared/ros2cli))

# DDS stays on this machine for everything started from here: loopback discovery, the
# loopback-only Fast DDS profile, no static peers, and a domain id of this run (kerv_ros/loopback.py
# holds the same values for Python entry points; test/test_loopback.py checks they agree).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export ROS_STATIC_PEERS :=
ifndef ROS_DOMAIN_ID
ROS_DOMAIN_ID := $(shell $(PYTHON) -c 'import random; print(random.randint(1, 100))')
endif
export ROS_DOMAIN_ID

DEMO_TASKS ?= reach,push,pick
DEMO_EPISODES ?= 2
DEMO_MODES ?= ar,hybrid
DEMO_OUT ?= runs/demo
DEMO_MODEL ?= default

.PHONY: venv demo test bench lint ros-env clean

venv: $(STAMP)

# Recreated when the interpreter is missing (a moved or broken venv); refreshed when any input
# of the set-up changes. A second run with nothing changed does nothing.
$(STAMP): $(SETUP_INPUTS)
	@if ! $(BIN)/python -c 'import sys' >/dev/null 2>&1; then \
		echo "creating $(VENV)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e .
	tools/build_msgs.sh $(VENV)
	@if [ -n "$(ROS2CLI_BUNDLE)" ]; then bash $(ROS2CLI_BUNDLE)/install.sh $(VENV); \
	else echo "*** no ros2cli bundle (ROS2CLI_BUNDLE): the real-CLI tests will not run ***"; fi
	tools/install_ros_layout.sh $(VENV)
	@touch $@

demo: venv
	$(BIN)/kerv sim run --model $(DEMO_MODEL) --task $(DEMO_TASKS) --episodes $(DEMO_EPISODES) \
		--modes $(DEMO_MODES) -o $(DEMO_OUT)

test: venv
	$(BIN)/python -m pytest test

bench: venv
	$(BIN)/kerv bench --model random --steps 20 --json runs/bench.json

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The DDS environment in force for commands run from this Makefile.
ros-env:
	@env | grep -E '^(ROS_AUTOMATIC_DISCOVERY_RANGE|FASTDDS_DEFAULT_PROFILES_FILE|RMW_IMPLEMENTATION|ROS_STATIC_PEERS|ROS_DOMAIN_ID)=' | sort

clean:
	rm -rf $(VENV) build install log runs
