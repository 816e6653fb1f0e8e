"""Arm kinematics from a URDF: forward kinematics, the geometric Jacobian and the live twist.

Why pinocchio: it is the maintained rigid-body library of the field, loads the same URDF the
simulator uses (pybullet_data's ``franka_panda/panda.urdf``; any arm's description works), and a
frame Jacobian costs about 1 us here, so the node can afford it on every control tick. The twist
``J(q) q_dot`` is the end-effector motion the arm actually made, which is what seeds the KERV
Kalman filter (DESIGN.md 2, Kinematics).

Frames: every vector is expressed in the URDF's root frame (``panda_link0`` for the Panda), the
frame ``kerv_node`` commands twists in, and the twist is the velocity of the end-effector frame's
origin with the root's axes (pinocchio's ``LOCAL_WORLD_ALIGNED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pinocchio as pin

from kerv_ros.config import PANDA_EE_FRAME


def default_urdf() -> Path:
    """The Panda description the simulator uses (shipped inside the pybullet wheel)."""
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


@dataclass(frozen=True)
class Motion:
    """The end-effector at one joint reading: pose and twist in the base frame.

    ``twist`` is (vx, vy, vz, wx, wy, wz) in m/s and rad/s, or None when it could not be had
    (first reading without velocities). ``finite_difference`` says the twist came from two joint
    readings' positions because the message had no usable velocities.
    """

    position: np.ndarray
    rotation: np.ndarray
    twist: np.ndarray | None
    finite_difference: bool
    stamp: float | None


class ArmKinematics:
    """Forward kinematics and Jacobians of one end-effector frame over named arm joints.

    ``joint_names`` are the arm joints the node reads from JointState, in its configured order
    (``ros_io.joint_sample`` picks them out of a message in any order, ignores extra joints and
    names missing ones); every other joint of the URDF (the fingers) stays at its neutral
    position, which cannot move the end-effector frame of a serial arm whose fingers hang off
    the hand.
    """

    def __init__(
        self, joint_names: tuple[str, ...], urdf: str = "", ee_frame: str = PANDA_EE_FRAME
    ) -> None:
        """``urdf`` '' is the Panda of pybullet_data (the simulator's robot)."""
        path = Path(urdf) if urdf else default_urdf()
        if not path.is_file():
            raise FileNotFoundError(f"URDF not found: {path}")
        try:
            self.model = pin.buildModelFromUrdf(str(path))
        except Exception as err:  # pinocchio raises plain ValueError/RuntimeError with XML detail
            raise ValueError(f"cannot load URDF {path}: {err}") from err
        self.data = self.model.createData()
        if not self.model.existFrame(ee_frame):
            frames = [f.name for f in self.model.frames]
            raise ValueError(f"URDF {path.name} has no frame {ee_frame!r} (has {frames})")
        self.ee_frame = self.model.getFrameId(ee_frame)
        unknown = [name for name in joint_names if not self.model.existJointName(name)]
        if unknown:
            raise ValueError(f"URDF {path.name} has no joints {unknown}")
        joints = [self.model.joints[self.model.getJointId(name)] for name in joint_names]
        if any(joint.nq != 1 or joint.nv != 1 for joint in joints):
            raise ValueError("only single-axis (revolute or prismatic) arm joints are supported")
        self.joint_names = tuple(joint_names)
        self._q_index = np.array([joint.idx_q for joint in joints])
        self._v_index = np.array([joint.idx_v for joint in joints])
        # The single-axis joints from the root to the end-effector frame, base first: the
        # joints that move it, in the order a policy's joint state is read.
        supports = self.model.supports[self.model.frames[self.ee_frame].parentJoint]
        self.chain = tuple(
            self.model.names[j] for j in supports[1:] if self.model.joints[j].nq == 1
        )
        self.lower = self.model.lowerPositionLimit[self._q_index].copy()
        self.upper = self.model.upperPositionLimit[self._q_index].copy()
        self.velocity_limit = self.model.velocityLimit[self._v_index].copy()
        self._q = pin.neutral(self.model)
        self.urdf = path

    def limit_problem(
        self,
        positions: np.ndarray,
        velocities: np.ndarray | None,
        margin_rad: float = 0.1,
        velocity_factor: float = 1.5,
    ) -> str:
        """Why a reading is outside the URDF's limits ('' when it is inside).

        Positions may exceed the joint limits by ``margin_rad`` (encoders and controllers
        overshoot a little), velocities the URDF's limit by ``velocity_factor``; beyond that the
        reading is not one this arm can be in. Joints the URDF leaves unlimited are not checked.
        """
        positions = np.asarray(positions, dtype=np.float64)
        bounded = np.isfinite(self.lower) & np.isfinite(self.upper) & (self.upper > self.lower)
        outside = bounded & (
            (positions < self.lower - margin_rad) | (positions > self.upper + margin_rad)
        )
        if outside.any():
            return "joint positions outside the URDF limits: " + _name_some(
                [
                    f"{n}={p:.4g} (limits {lo:.3g}..{hi:.3g})"
                    for n, p, lo, hi, bad in zip(
                        self.joint_names, positions, self.lower, self.upper, outside, strict=True
                    )
                    if bad
                ]
            )
        if velocities is not None:
            velocities = np.asarray(velocities, dtype=np.float64)
            limit = self.velocity_limit * velocity_factor
            fast = (limit > 0) & (np.abs(velocities) > limit)
            if fast.any():
                return "joint velocities over the URDF limits: " + _name_some(
                    [
                        f"{n}={v:.4g} (limit {lim:.3g})"
                        for n, v, lim, bad in zip(
                            self.joint_names, velocities, self.velocity_limit, fast, strict=True
                        )
                        if bad
                    ]
                )
        return ""

    def _configuration(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(self.joint_names),):
            expected = len(self.joint_names)
            raise ValueError(f"expected {expected} joint positions, got shape {positions.shape}")
        q = self._q.copy()
        q[self._q_index] = positions
        return q

    def forward(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position (m) and rotation matrix in the base frame."""
        q = self._configuration(positions)
        pin.framesForwardKinematics(self.model, self.data, q)
        placement = self.data.oMf[self.ee_frame]
        return placement.translation.copy(), placement.rotation.copy()

    def jacobian(self, positions: np.ndarray) -> np.ndarray:
        """6 x n geometric Jacobian (linear rows first) over the configured joints."""
        q = self._configuration(positions)
        full = pin.computeFrameJacobian(
            self.model, self.data, q, self.ee_frame, pin.LOCAL_WORLD_ALIGNED
        )
        return full[:, self._v_index].copy()

    def twist(self, positions: np.ndarray, velocities: np.ndarray) -> np.ndarray:
        """End-effector twist ``J(q) q_dot`` (m/s, rad/s) in the base frame."""
        velocities = np.asarray(velocities, dtype=np.float64)
        if velocities.shape != (len(self.joint_names),) or not np.all(np.isfinite(velocities)):
            raise ValueError(f"joint velocities must be {len(self.joint_names)} finite values")
        return self.jacobian(positions) @ velocities


def _name_some(items: list[str], shown: int = 3) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")


class TwistEstimator:
    """The live end-effector motion from successive joint readings.

    With velocities, the twist is ``J(q) q_dot``. Without (absent or not finite), it is the
    finite difference of the joint positions over the readings' stamps mapped through the
    Jacobian at the midpoint, and flagged: never a silent zero. The first reading without
    velocities, or one whose stamp does not advance, has no twist (None).
    """

    def __init__(self, kinematics: ArmKinematics) -> None:
        self.kinematics = kinematics
        self._last: tuple[float, np.ndarray] | None = None

    def reset(self) -> None:
        self._last = None

    def update(
        self, positions: np.ndarray, velocities: np.ndarray | None, stamp: float | None
    ) -> Motion:
        positions = np.asarray(positions, dtype=np.float64)
        position, rotation = self.kinematics.forward(positions)
        usable = velocities is not None and np.all(np.isfinite(velocities))
        twist = None
        if usable:
            twist = self.kinematics.twist(positions, velocities)
        elif stamp is not None and self._last is not None and stamp > self._last[0]:
            last_stamp, last_positions = self._last
            rates = (positions - last_positions) / (stamp - last_stamp)
            twist = self.kinematics.jacobian(0.5 * (positions + last_positions)) @ rates
        if stamp is not None:
            self._last = (stamp, positions)
        return Motion(position, rotation, twist, not usable and twist is not None, stamp)
