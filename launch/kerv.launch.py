"""Launch kerv_node: ``ros2 launch kerv_ros kerv.launch.py model:=... autostart:=true``.

Arguments: ``params_file`` (default: the installed config/kerv.yaml); the model options, named as
the node's parameters and the ``kerv`` tool's flags: ``model`` (default, random or a checkpoint
directory; ``model_path`` is the older name of the same), ``drafter_path``, ``datastore_path``,
``unnorm_key``, ``device``, ``dtype``, ``trust_remote_code`` (each left empty keeps the
params_file's value); ``namespace``, ``autostart`` (false on hardware: configure and activate
with ``ros2 lifecycle set``), and the topic remaps ``image_topic``, ``joint_states_topic`` and
``twist_topic`` (point the latter at MoveIt Servo's ``/servo_node/delta_twist_cmds``).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue

MODEL_ARGUMENTS = {
    "model": "default | random | checkpoint directory",
    "drafter_path": "drafter .safetensors",
    "datastore_path": "retrieval datastore .safetensors",
    "unnorm_key": "dataset statistics to un-normalise with (OpenVLA)",
    "device": "torch device (cpu, cuda, cuda:1)",
    "dtype": "float32 | bfloat16",
    "trust_remote_code": "true: let a Prismatic variant's own code run",
}


def _model_overrides(context) -> dict:
    """The model arguments given on the command line; the rest stay as params_file says."""
    values = {}
    for name in MODEL_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value:
            values[name] = value.lower() == "true" if name == "trust_remote_code" else value
    legacy = LaunchConfiguration("model_path").perform(context)
    if legacy and "model" not in values:
        values["model"] = legacy
    return values


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("kerv_ros"))
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=str(share / "config" / "kerv.yaml"),
            description="kerv_node parameters (ros__parameters YAML)",
        ),
        *[
            DeclareLaunchArgument(name, default_value="", description=f"{text} ('' = params_file)")
            for name, text in MODEL_ARGUMENTS.items()
        ],
        DeclareLaunchArgument("model_path", default_value="", description="older name of model"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument(
            "autostart", default_value="false", description="configure and activate at start-up"
        ),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("joint_states_topic", default_value="/joint_states"),
        DeclareLaunchArgument(
            "twist_topic",
            default_value="~/delta_twist_cmds",
            description="e.g. /servo_node/delta_twist_cmds",
        ),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])


def _node(context) -> list:
    node = LifecycleNode(
        package="kerv_ros",
        executable="kerv_node",
        name="kerv_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                **_model_overrides(context),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            },
        ],
        remappings=[
            ("/camera/image_raw", LaunchConfiguration("image_topic")),
            ("/joint_states", LaunchConfiguration("joint_states_topic")),
            ("~/delta_twist_cmds", LaunchConfiguration("twist_topic")),
        ],
    )
    return [node]
