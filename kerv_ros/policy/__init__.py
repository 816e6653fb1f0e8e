"""Policy backends: one interface (``PolicyBackend``) for every VLA the engine can drive."""

from kerv_ros.policy.backend import Observation, PolicyBackend, PrefillState, TreeOutput

__all__ = ["Observation", "PolicyBackend", "PrefillState", "TreeOutput"]
