"""Imports point down the layers of DESIGN.md 1: nothing below imports upward.

Checked on the source (every ``import`` and ``from ... import``, inside functions too), beside
test_ros_free_core.py which checks that the core never imports rclpy.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kerv_ros"
LAYERS = (
    # 0: types and settings every layer uses
    {"actions", "config", "drafts", "observation", "control", "loopback", "processes", "msg"},
    # 1: pure helpers over them: filters, robot model, datastore, bags, message conversion,
    # report tables
    {"kalman", "kinematics", "retrieval", "bags", "ros_io", "boundary", "report", "dyq"},
    # 2: the arm's motion (state estimation; its policies are in boundary)
    {"motion"},
    # 3: the target models
    {"policy"},
    # 4: decoding on top of the models, the drafters, the motion and the datastore
    {"decoding"},
    # 5: what runs the engine: loading, benchmarks, evaluation, training, the simulator,
    # precision calibration
    {
        "loading",
        "bench",
        "evaluation",
        "training",
        "offline",
        "sim",
        "recording",
        "calibration",
        "scene",
    },
    # 6: the ROS adapters and the command line
    {"node", "sim.sim_node", "sim.closed_loop", "cli"},
)


def rank(module: str) -> int:
    """The layer of ``kerv_ros.<module>`` (the longest matching dotted prefix decides)."""
    best, best_len = None, -1
    for layer, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = layer, len(name)
    assert best is not None, f"kerv_ros.{module} is in no layer of test_layers.py"
    return best


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kerv_ros":
                out |= {alias.name for alias in node.names}
            elif node.module.startswith("kerv_ros."):
                out.add(node.module.removeprefix("kerv_ros."))
        elif isinstance(node, ast.Import):
            out |= {
                a.name.removeprefix("kerv_ros.")
                for a in node.names
                if a.name.startswith("kerv_ros.")
            }
    return out


def test_imports_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.endswith("__init__") or module.startswith("models") or module.startswith("data"):
            continue
        for imported in imports_of(path):
            if rank(imported) > rank(module):
                upward.append(
                    f"{module} (layer {rank(module)}) imports {imported} (layer {rank(imported)})"
                )
    assert upward == []
