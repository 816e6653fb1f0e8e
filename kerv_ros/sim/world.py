"""The simulated world: a Panda on a table with coloured cubes and a fixed camera (PyBullet).

Why PyBullet (DESIGN.md 5): its wheel ships the Panda URDF (``franka_panda/panda.urdf``), the
same robot description the kinematics can load, renders headless with its CPU renderer (~20 ms
at 128x128 here) and solves IK in ~0.1 ms; MuJoCo 4 renders too but has no Panda model that
works offline.

The world takes exactly what kerv_node publishes: an end-effector twist in the base frame
(``panda_link0``) and a gripper opening. Each control period, the twist moves a reference pose;
IK turns the reference into joint targets, and the joints are driven at the constant velocity
that reaches them in one period (resolved-rate control), so the joint velocities the world
reports are the ones that actually moved the arm. Commands that would leave the workspace or a
joint's range are clamped; non-finite commands are refused (the arm holds still); both are
counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pybullet as pb
import pybullet_data

from kerv_ros.control import clamp_norm

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
EE_LINK = 11  # panda_grasptarget: between the fingertips
HOME = (0.0, -0.25, 0.0, -2.3, 0.0, 2.05, 0.785)
FINGER_TRAVEL = 0.04  # m per finger, fully open
CUBE_HALF = 0.02
COLOURS = {"red": (0.85, 0.12, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.12, 0.25, 0.9)}


@dataclass(frozen=True)
class SimConfig:
    control_rate_hz: float = 10.0
    substeps: int = 24  # physics steps per control period (240 Hz at 10 Hz)
    image_size: int = 128
    workspace_low: tuple[float, float, float] = (0.25, -0.4, 0.018)
    workspace_high: tuple[float, float, float] = (0.8, 0.4, 0.5)
    max_linear_speed: float = 0.25
    max_angular_speed: float = 1.0
    # Framed so that the cubes' workspace and the push corridor fill the image: a 4 cm cube
    # spans ~11 pixels at 128 px, so a 16-pixel patch locates it to a few centimetres.
    camera_eye: tuple[float, float, float] = (0.75, 0.04, 0.75)
    camera_target: tuple[float, float, float] = (0.42, 0.04, 0.0)
    camera_fov: float = 40.0

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz


@dataclass
class Layout:
    """Where the cubes start (x, y on the table) and which one the instruction names."""

    cubes: dict[str, tuple[float, float]]
    target: str


@dataclass
class CommandReport:
    clamped: bool = False
    refused: bool = False


@dataclass
class Counters:
    steps: int = 0
    clamped: int = 0
    refused: int = 0


@dataclass
class JointReading:
    names: list[str]
    positions: np.ndarray
    velocities: np.ndarray


@dataclass
class PandaWorld:
    """One PyBullet client with the Panda, the cubes and the camera."""

    config: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self) -> None:
        self.client = pb.connect(pb.DIRECT)
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.client)
        self.counters = Counters()
        c = self.config
        self._view = pb.computeViewMatrix(c.camera_eye, c.camera_target, (0, 0, 1))
        self._projection = pb.computeProjectionMatrixFOV(c.camera_fov, 1.0, 0.05, 4.0)

    def close(self) -> None:
        pb.disconnect(self.client)

    def _call(self, fn, *args, **kwargs):
        return fn(*args, physicsClientId=self.client, **kwargs)

    def reset(self, layout: Layout) -> None:
        """A fresh scene: arm at home, gripper open, cubes where the layout says."""
        self._call(pb.resetSimulation)
        self._call(pb.setGravity, 0, 0, -9.81)
        self._call(pb.setTimeStep, self.config.period_s / self.config.substeps)
        table = self._call(pb.loadURDF, "plane.urdf")
        # A plain table top: high contrast between table, arm and cubes helps a small policy.
        self._call(
            pb.changeVisualShape, table, -1, rgbaColor=[0.55, 0.5, 0.45, 1.0], textureUniqueId=-1
        )
        self.robot = self._call(pb.loadURDF, "franka_panda/panda.urdf", useFixedBase=True)
        joints = [self._call(pb.getJointInfo, self.robot, j) for j in range(11)]
        index = {info[1].decode(): j for j, info in enumerate(joints)}
        self.arm = [index[name] for name in ARM_JOINTS]
        self.fingers = [index[name] for name in FINGER_JOINTS]
        self.lower = np.array([joints[j][8] for j in self.arm])
        self.upper = np.array([joints[j][9] for j in self.arm])
        self.max_velocity = np.array([joints[j][11] for j in self.arm])
        for j, q in zip(self.arm, HOME, strict=True):
            self._call(pb.resetJointState, self.robot, j, q)
        for j in self.fingers:
            self._call(pb.resetJointState, self.robot, j, FINGER_TRAVEL)
            self._call(pb.changeDynamics, self.robot, j, lateralFriction=1.5)
        self.cubes = {}
        shape = self._call(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=[CUBE_HALF] * 3)
        for colour, (x, y) in layout.cubes.items():
            visual = self._call(
                pb.createVisualShape,
                pb.GEOM_BOX,
                halfExtents=[CUBE_HALF] * 3,
                rgbaColor=[*COLOURS[colour], 1.0],
            )
            body = self._call(
                pb.createMultiBody,
                baseMass=0.08,
                baseCollisionShapeIndex=shape,
                baseVisualShapeIndex=visual,
                basePosition=[x, y, CUBE_HALF],
            )
            self._call(pb.changeDynamics, body, -1, lateralFriction=1.2)
            self.cubes[colour] = body
        self._hold_arm()
        self.gripper = 1.0
        position, orientation = self.ee_pose()
        self.reference = (position, orientation)
        self.counters = Counters()

    def _hold_arm(self) -> None:
        self._call(
            pb.setJointMotorControlArray,
            self.robot,
            self.arm,
            pb.VELOCITY_CONTROL,
            targetVelocities=[0.0] * 7,
            forces=[200.0] * 7,
        )

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        state = self._call(pb.getLinkState, self.robot, EE_LINK, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray:
        """End-effector position (m) at arm ``joints``.

        It resets the arm, so the simulation this world was running is lost: use a world kept
        for the purpose.
        """
        for j, q in zip(self.arm, joints, strict=True):
            self._call(pb.resetJointState, self.robot, j, float(q))
        return self.ee_pose()[0]

    def arrange(self, layout: Layout, joints: np.ndarray) -> None:
        """Move this world's cubes to ``layout`` and its arm to ``joints``, with no physics.

        For rendering many still scenes: ~3x cheaper than :meth:`reset`, which reloads the
        URDFs. The layout must name the cubes this world was reset with.
        """
        for colour, (x, y) in layout.cubes.items():
            self._call(
                pb.resetBasePositionAndOrientation,
                self.cubes[colour],
                [x, y, CUBE_HALF],
                [0, 0, 0, 1],
            )
        self.forward_kinematics(joints)

    def cube_position(self, colour: str) -> np.ndarray:
        return np.array(self._call(pb.getBasePositionAndOrientation, self.cubes[colour])[0])

    def joints(self) -> JointReading:
        """Arm and finger joints: positions and the velocities the physics integrated."""
        ids = self.arm + self.fingers
        states = self._call(pb.getJointStates, self.robot, ids)
        return JointReading(
            names=[*ARM_JOINTS, *FINGER_JOINTS],
            positions=np.array([s[0] for s in states]),
            velocities=np.array([s[1] for s in states]),
        )

    def apply(self, linear, angular, gripper: float) -> CommandReport:
        """Execute one command for one control period; see the module docstring."""
        c = self.config
        report = CommandReport()
        linear = np.asarray(linear, dtype=np.float64)
        angular = np.asarray(angular, dtype=np.float64)
        if not (
            np.all(np.isfinite(linear)) and np.all(np.isfinite(angular)) and np.isfinite(gripper)
        ):
            report.refused = True
            self.counters.refused += 1
            linear, angular, gripper = np.zeros(3), np.zeros(3), self.gripper
        limited = clamp_norm(linear, c.max_linear_speed), clamp_norm(angular, c.max_angular_speed)
        report.clamped = not (
            np.array_equal(limited[0], linear) and np.array_equal(limited[1], angular)
        )
        linear, angular = limited
        dt = c.period_s
        position, orientation = self.reference
        actual, _ = self.ee_pose()
        if np.linalg.norm(actual - position) > 0.05:  # blocked: do not wind the reference up
            position = actual
        target = position + linear * dt
        bounded = np.clip(target, c.workspace_low, c.workspace_high)
        report.clamped |= bool(np.any(bounded != target))
        turn = pb.getQuaternionFromAxisAngle(
            (angular / np.linalg.norm(angular)).tolist() if np.any(angular) else [0, 0, 1],
            float(np.linalg.norm(angular) * dt),
        )
        orientation = np.array(
            pb.multiplyTransforms([0, 0, 0], turn, [0, 0, 0], orientation.tolist())[1]
        )
        self.reference = (bounded, orientation)
        q = self.joints().positions[:7]
        solution = self._call(
            pb.calculateInverseKinematics,
            self.robot,
            EE_LINK,
            bounded.tolist(),
            orientation.tolist(),
            lowerLimits=self.lower.tolist(),
            upperLimits=self.upper.tolist(),
            jointRanges=(self.upper - self.lower).tolist(),
            restPoses=list(HOME),
            maxNumIterations=60,
            residualThreshold=1e-5,
        )
        solved = np.array(solution[:7])
        q_target = np.clip(solved, self.lower + 0.01, self.upper - 0.01)
        report.clamped |= bool(np.any(q_target != solved))
        velocity = (q_target - q) / dt
        limited = np.clip(velocity, -self.max_velocity, self.max_velocity)
        report.clamped |= bool(np.any(limited != velocity))
        self._call(
            pb.setJointMotorControlArray,
            self.robot,
            self.arm,
            pb.VELOCITY_CONTROL,
            targetVelocities=limited.tolist(),
            forces=[200.0] * 7,
        )
        self.gripper = float(np.clip(gripper, 0.0, 1.0))
        self._call(
            pb.setJointMotorControlArray,
            self.robot,
            self.fingers,
            pb.POSITION_CONTROL,
            targetPositions=[self.gripper * FINGER_TRAVEL] * 2,
            forces=[40.0] * 2,
        )
        for _ in range(c.substeps):
            self._call(pb.stepSimulation)
        self.counters.steps += 1
        self.counters.clamped += int(report.clamped)
        return report

    def render(self) -> np.ndarray:
        """The fixed camera's RGB image, H x W x 3 uint8."""
        size = self.config.image_size
        _, _, rgba, _, _ = self._call(
            pb.getCameraImage,
            size,
            size,
            self._view,
            self._projection,
            renderer=pb.ER_TINY_RENDERER,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()
