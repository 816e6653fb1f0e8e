"""A separate process that plays camera, joint states and an instruction into the graph.

Usage: python feeder.py NODE_NAME SECONDS RATE_HZ
"""

import sys
import time

import rclpy
from rclpy.qos import qos_profile_sensor_data
from ros_probe import LATCHED, good_image, good_joints
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String


def main() -> None:
    node_name, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("kerv_test_feeder")
    image_pub = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    joint_pub = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    instruction_pub = node.create_publisher(String, f"/{node_name}/instruction", LATCHED)
    instruction_pub.publish(String(data="pick up the green cube"))
    image, joints = good_image(), good_joints()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stamp = node.get_clock().now().to_msg()
        image.header.stamp = joints.header.stamp = stamp
        image_pub.publish(image)
        joint_pub.publish(joints)
        rclpy.spin_once(node, timeout_sec=1.0 / rate)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
