"""The demo: the simulated Panda (sim_node) driven by kerv_node.

``ros2 launch kerv_ros demo.launch.py task:=pick episodes:=5 model_path:=default``.
The simulator starts its first episode only once kerv_node is active (as ``kerv sim run``
does), and the launch ends by itself after the last episode with sim_node's summary. Without
launch_ros, ``kerv sim run`` starts the same two processes.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.events import Shutdown, matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("kerv_ros"))
    args = [
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "kerv.yaml")),
        DeclareLaunchArgument("model_path", default_value="default"),
        DeclareLaunchArgument("mode", default_value="hybrid"),
        DeclareLaunchArgument("task", default_value="reach", description="reach | push | pick"),
        DeclareLaunchArgument("seed", default_value="1000"),
        DeclareLaunchArgument("episodes", default_value="3"),
    ]
    sim = Node(
        package="kerv_ros",
        executable="sim_node",
        name="kerv_sim",
        output="screen",
        parameters=[
            {
                "task": LaunchConfiguration("task"),
                "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
                "exit_when_done": True,
            }
        ],
    )
    kerv = LifecycleNode(
        package="kerv_ros",
        executable="kerv_node",
        name="kerv_node",
        namespace="",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model_path"),
                "mode": LaunchConfiguration("mode"),
            },
        ],
    )

    # The launch drives the transitions itself (not the node's autostart): its ChangeState calls
    # wait for the node's services, so it cannot miss the transition events it waits for.
    def change(transition: int) -> EmitEvent:
        return EmitEvent(
            event=ChangeState(lifecycle_node_matcher=matches_action(kerv), transition_id=transition)
        )

    configure = RegisterEventHandler(
        OnProcessStart(target_action=kerv, on_start=[change(Transition.TRANSITION_CONFIGURE)])
    )
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=kerv,
            goal_state="inactive",
            entities=[change(Transition.TRANSITION_ACTIVATE)],
        )
    )
    start_sim = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=kerv, goal_state="active", entities=[sim])
    )
    finish = RegisterEventHandler(
        OnProcessExit(
            target_action=sim,
            on_exit=[
                LogInfo(msg="demo done: the summary is sim_node's last line above"),
                EmitEvent(event=Shutdown(reason="demo done")),
            ],
        )
    )
    return LaunchDescription([*args, configure, activate, start_sim, finish, kerv])
