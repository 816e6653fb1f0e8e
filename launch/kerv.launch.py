"""Launch kerv_node: ``ros2 launch kerv_ros kerv.launch.py model_path:=... autostart:=true``.

Arguments: ``params_file`` (default: the installed config/kerv.yaml), ``model_path`` (default,
random or a checkpoint directory), ``namespace``, ``autostart`` (false on hardware: configure
and activate with ``ros2 lifecycle set``), and the topic remaps ``image_topic``,
``joint_states_topic`` and ``twist_topic`` (point the latter at MoveIt Servo's
``/servo_node/delta_twist_cmds``).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("kerv_ros"))
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=str(share / "config" / "kerv.yaml"),
            description="kerv_node parameters (ros__parameters YAML)",
        ),
        DeclareLaunchArgument(
            "model_path",
            default_value="default",
            description="default | random | checkpoint directory",
        ),
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
    node = LifecycleNode(
        package="kerv_ros",
        executable="kerv_node",
        name="kerv_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model_path"),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            },
        ],
        remappings=[
            ("/camera/image_raw", LaunchConfiguration("image_topic")),
            ("/joint_states", LaunchConfiguration("joint_states_topic")),
            ("~/delta_twist_cmds", LaunchConfiguration("twist_topic")),
        ],
    )
    return LaunchDescription([*args, node])
