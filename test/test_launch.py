"""launch/kerv.launch.py follows launch_ros conventions and offers the documented arguments.

launch_ros is not on PyPI, so here the file is checked statically; the node's own
``--ros-args`` path, which the launch file drives, is exercised in test_node.py.
"""

import ast
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "kerv.launch.py"


def calls(tree, name):
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
    ]


def test_launch_arguments_and_node():
    tree = ast.parse(LAUNCH.read_text())
    assert any(
        isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
        for n in tree.body
    )
    names = {
        c.args[0].value
        for c in calls(tree, "DeclareLaunchArgument")
        if c.args[0].__class__ is ast.Constant
    }
    model_args = next(
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and n.targets[0].id == "MODEL_ARGUMENTS"
    )
    assert {k.value for k in model_args.keys} == {
        "model",
        "drafter_path",
        "datastore_path",
        "unnorm_key",
        "device",
        "dtype",
        "trust_remote_code",
    }
    assert names == {
        "params_file",
        "model_path",
        "namespace",
        "autostart",
        "image_topic",
        "joint_states_topic",
        "twist_topic",
    }
    (node,) = calls(tree, "LifecycleNode")
    keywords = {k.arg: k.value for k in node.keywords}
    assert keywords["package"].value == "kerv_ros"
    assert keywords["executable"].value == "kerv_node"
    assert keywords["name"].value == "kerv_node"
    remapped = {e.elts[0].value for e in keywords["remappings"].elts}
    assert remapped == {"/camera/image_raw", "/joint_states", "~/delta_twist_cmds"}


def test_node_executable_is_installed_for_ros2_run():
    cmake = (LAUNCH.parents[1] / "CMakeLists.txt").read_text()
    assert "scripts/kerv_node" in cmake
    assert "DIRECTORY launch config" in cmake
    assert "kerv_node = kerv_ros.node:main" in (LAUNCH.parents[1] / "setup.py").read_text()


def test_demo_launch_starts_sim_and_node():
    tree = ast.parse((LAUNCH.parent / "demo.launch.py").read_text())
    names = {c.args[0].value for c in calls(tree, "DeclareLaunchArgument")}
    assert {"model_path", "mode", "task", "seed", "episodes"} <= names
    executables = {
        k.value.value
        for call in calls(tree, "Node") + calls(tree, "LifecycleNode")
        for k in call.keywords
        if k.arg == "executable"
    }
    assert executables == {"sim_node", "kerv_node"}
    cmake = (LAUNCH.parents[1] / "CMakeLists.txt").read_text()
    assert "scripts/sim_node" in cmake
