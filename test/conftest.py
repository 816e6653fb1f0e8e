"""Test-wide set-up: DDS stays on loopback for every test and every process a test starts."""

from kerv_ros import loopback

# Before any test imports rclpy; subprocesses inherit os.environ.
LOOPBACK_ENV = loopback.apply()
