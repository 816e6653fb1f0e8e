"""A simulated Franka Panda with instructed table-top tasks (PyBullet), ROS-free.

``sim_node`` is the thin ROS adapter; everything else here runs without rclpy.
"""
