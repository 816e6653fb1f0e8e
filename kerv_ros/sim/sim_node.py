"""sim_node: the simulated Panda as a ROS 2 node (the thin adapter over kerv_ros.sim).

Publishes what an arm's driver and camera would (``/camera/image_raw``, ``/joint_states`` with
positions and velocities) and subscribes to what kerv_node commands (``/kerv_node/
delta_twist_cmds``, ``/kerv_node/gripper_command``; remap them for another commander). Every
control period it executes the newest command (a zero twist when none arrived within
``command_timeout_s``), then publishes the new observation and ``~/success``.

Episodes: ``~/reset`` (std_srvs/Trigger) starts the episode of the ``task`` and ``seed``
parameters and latches its instruction on ``instruction_topic``. An episode ends at success or at
the task's step limit and is reported on ``~/episode`` (JSON in a std_msgs/String); with
``episodes`` > 1 the node goes on by itself through seeds ``seed``, ``seed + 1``, ..., then
holds still until the next reset, or with ``exit_when_done`` logs a summary and exits (what
demo.launch.py waits for to end the launch).
"""

from __future__ import annotations

import json
import time

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from kerv_ros.ros_io import rgb_to_image_fields
from kerv_ros.sim.tasks import TASKS, Expert, new_episode, succeeded
from kerv_ros.sim.world import PandaWorld, SimConfig

EPISODE_QOS = QoSProfile(
    depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


class SimNode(Node):
    def __init__(self) -> None:
        super().__init__("kerv_sim")
        declare = self.declare_parameter
        declare("task", "reach", ParameterDescriptor(description="one of " + ", ".join(TASKS)))
        declare("seed", 0, ParameterDescriptor(description="episode seed (layout)"))
        declare(
            "episodes",
            0,
            ParameterDescriptor(
                description="run this many episodes by itself (0 = wait for ~/reset)"
            ),
        )
        declare("control_rate_hz", 10.0, ParameterDescriptor(read_only=True))
        declare("image_size", 128, ParameterDescriptor(read_only=True))
        declare(
            "command_timeout_s",
            0.5,
            ParameterDescriptor(description="older commands are replaced by a zero twist"),
        )
        declare(
            "command_frame",
            "panda_link0",
            ParameterDescriptor(description="frame the twist commands must be in"),
        )
        declare("instruction_topic", "/kerv_node/instruction", ParameterDescriptor(read_only=True))
        declare(
            "expert",
            False,
            ParameterDescriptor(
                description="drive the arm with the scripted expert instead of the commands"
            ),
        )
        declare(
            "exit_when_done",
            False,
            ParameterDescriptor(description="after the episodes: log a summary and exit"),
        )
        get = self.get_parameter
        self.results: list[dict] = []
        self.world = PandaWorld(
            SimConfig(
                control_rate_hz=get("control_rate_hz").value, image_size=get("image_size").value
            )
        )
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.success_pub = self.create_publisher(Bool, "~/success", 10)
        # Latched with history: an episode can end (the expert reaches in ~1 s) before a
        # listener started at the same time has discovered this node.
        self.episode_pub = self.create_publisher(String, "~/episode", EPISODE_QOS)
        self.instruction_pub = self.create_publisher(
            String, get("instruction_topic").value, LATCHED
        )
        self.create_subscription(TwistStamped, "/kerv_node/delta_twist_cmds", self._on_twist, 10)
        self.create_subscription(Float64, "/kerv_node/gripper_command", self._on_gripper, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.twist: tuple[float, TwistStamped] | None = None
        self.gripper = 1.0
        self.episode = None
        self.remaining = get("episodes").value
        self._start(get("task").value, get("seed").value)
        self.create_timer(self.world.config.period_s, self._tick)

    def _start(self, task: str, seed: int) -> str:
        self.episode = new_episode(self.world, task, seed)
        self.expert = Expert(self.world, self.episode)
        self.seed, self.steps, self.twist, self.gripper = seed, 0, None, 1.0
        self.done = False
        instruction = self.episode.task.instruction(self.episode.layout.target)
        self.instruction_pub.publish(String(data=instruction))
        self.get_logger().info(f"episode {task} seed {seed}: {instruction!r}")
        self._publish_observation(False)
        return instruction

    def _on_reset(self, request, response):
        task, seed = self.get_parameter("task").value, self.get_parameter("seed").value
        if task not in TASKS:
            response.success, response.message = False, f"unknown task {task!r}"
            return response
        response.success, response.message = True, self._start(task, seed)
        return response

    def _on_twist(self, msg: TwistStamped) -> None:
        frame = self.get_parameter("command_frame").value
        if msg.header.frame_id not in ("", frame):
            self.get_logger().warning(
                f"twist in frame {msg.header.frame_id!r} ignored (expects {frame!r})",
                throttle_duration_sec=2.0,
            )
            return
        self.twist = (time.monotonic(), msg)

    def _on_gripper(self, msg: Float64) -> None:
        self.gripper = msg.data

    def _command(self):
        if self.get_parameter("expert").value:
            return self.expert.act()
        timeout = self.get_parameter("command_timeout_s").value
        if self.twist is None or time.monotonic() - self.twist[0] > timeout:
            return np.zeros(3), np.zeros(3), self.gripper
        t = self.twist[1].twist
        return (
            (t.linear.x, t.linear.y, t.linear.z),
            (t.angular.x, t.angular.y, t.angular.z),
            self.gripper,
        )

    def _tick(self) -> None:
        if self.done:
            self._publish_observation(False)
            return
        report = self.world.apply(*self._command())
        if report.refused:
            self.get_logger().warning("non-finite command refused (arm held)")
        self.steps += 1
        success = succeeded(self.world, self.episode)
        self._publish_observation(success)
        if success or self.steps >= self.episode.task.max_steps:
            self._finish(success)

    def _finish(self, success: bool) -> None:
        task = self.episode.task.name
        summary = {
            "task": task,
            "seed": self.seed,
            "success": success,
            "steps": self.steps,
            "clamped": self.world.counters.clamped,
            "refused": self.world.counters.refused,
        }
        self.episode_pub.publish(String(data=json.dumps(summary)))
        self.get_logger().info(f"episode done: {summary}")
        self.results.append(summary)
        self.remaining -= 1
        if self.remaining > 0:
            self._start(task, self.seed + 1)
            return
        self.done = True  # hold still until ~/reset
        if self.get_parameter("exit_when_done").value:
            self.get_logger().info(f"summary: {summarise(self.results)}")
            raise SystemExit(0)

    def _publish_observation(self, success: bool) -> None:
        stamp = self.get_clock().now().to_msg()
        image = Image(**rgb_to_image_fields(self.world.render()))
        image.header.stamp, image.header.frame_id = stamp, "camera"
        self.image_pub.publish(image)
        joints = self.world.joints()
        msg = JointState(
            name=joints.names,
            position=joints.positions.tolist(),
            velocity=joints.velocities.tolist(),
        )
        msg.header.stamp = stamp
        self.joint_pub.publish(msg)
        self.success_pub.publish(Bool(data=bool(success)))


def summarise(results: list[dict]) -> str:
    """``reach 2/3 successful, mean 14.0 steps`` per task, in the order they ran."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in results):
        runs = [r for r in results if r["task"] == task]
        wins = sum(r["success"] for r in runs)
        steps = np.mean([r["steps"] for r in runs])
        parts.append(f"{task} {wins}/{len(runs)} successful, mean {steps:.1f} steps")
    return "; ".join(parts)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = SimNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        node.world.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
