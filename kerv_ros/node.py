"""kerv_node: the ROS 2 lifecycle node around the decoding engine (the thin ROS adapter).

configure loads the policy and drafter; activate starts a control timer that, at
``control_rate_hz``, takes the newest camera image and joint state, decodes one action step
and publishes it as a MoveIt Servo twist and a gripper command; deactivate and shutdown publish
one zero twist. Nothing is commanded before activate, and whatever arrives on a topic, the node
answers with either a command from fresh, valid inputs or a zero twist and the reason.

QoS: camera and joint states are subscribed with sensor-data QoS at depth 1 (best effort,
keep last 1), so a slow step never works through a backlog: the next tick takes the newest
sample. The instruction is read by two subscriptions: a transient-local one, so a node started
after a latched instruction was published still gets it, and a volatile one, so a plain
publisher (``ros2 topic pub`` without ``--qos-durability``) is not refused as incompatible; a
latched message that arrives on both is taken once. Commands are reliable, depth 1: an old
command is worth nothing once a newer one exists.

Threads: the model runs in a thread of its own that the control timer only wakes; every ROS
callback (subscriptions, services, timers) is short and runs in one executor thread, so none of
them ever waits for the model. Two designs were measured worse on 2 cores with 640x480 images at
10 Hz: the model inside a timer callback of its own callback group (once a step overran, the
executor's wait returned at once for the ready-but-blocked timer and busy-looped, p99 step
1-4 s), and the model thread beside a MultiThreadedExecutor (its polling took the GIL from the
model: p99 1 s in spec mode, against 127 ms with a single executor thread, which is the engine's
own p99). A tick that finds the previous step still running is not queued twice: the model
thread takes the newest inputs when it gets to it (no backlog).

Staleness is judged on the node's monotonic receive time, which does not depend on the sender's
clock being synchronised.
"""

from __future__ import annotations

import array
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, Node, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String

from kerv_ros import ros_io
from kerv_ros.config import (
    CONTROL_PARAMS,
    ENGINE_PARAMS,
    MODEL_PARAMS,
    ControlConfig,
    EngineConfig,
    ModelConfig,
    Param,
    config_from_params,
    params_of,
)
from kerv_ros.decoding.engine import DecodeEngine, StepResult
from kerv_ros.msg import DecodeStats
from kerv_ros.policy.backend import Observation

SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT
)
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
)
WINDOW = 200  # steps kept for the diagnostics' percentiles


@dataclass
class _Latest:
    """The newest message of a topic and when it arrived (monotonic seconds)."""

    msg: object = None
    received: float = 0.0
    count: int = 0


@dataclass
class _Health:
    """What /diagnostics reports; written by the control loop, read once a second."""

    steps: int = 0
    holds: int = 0
    overruns: int = 0
    step_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    overhead_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    current: str = ""  # why the last tick held, "" when it commanded
    last_error: str = ""
    error_level: bytes = DiagnosticStatus.OK
    note: str = ""  # a warning that does not stop commanding (e.g. no joint velocities)
    twist_source: str = ""  # kerv: where the last step's measured motion came from


def _descriptor(param: Param, value: object) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=param.description, read_only=param.read_only)
    if param.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(param.choices)
    if param.low is not None and isinstance(value, bool) is False:
        if isinstance(value, int):
            descriptor.integer_range = [
                IntegerRange(from_value=int(param.low), to_value=int(param.high), step=1)
            ]
        elif isinstance(value, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(param.low), to_value=float(param.high))
            ]
    return descriptor


def _ros_value(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _from_ros(value: object) -> object:
    """Array parameters (lists, or array.array for doubles) as the configs' tuples."""
    return tuple(value) if isinstance(value, (list, array.array)) else value


class KervNode(Node):
    """Lifecycle node: camera + joint states + instruction in, twist + gripper + stats out."""

    def __init__(self, **kwargs) -> None:
        super().__init__("kerv_node", **kwargs)
        self._declare_parameters()
        self._lock = threading.Lock()  # guards the requested configs and the latest inputs
        self._command_lock = threading.Lock()  # orders commands against deactivation
        self._engine: DecodeEngine | None = None
        self._active = False
        self._engine_config, self._control = self._configs_from_parameters()
        self._requested_engine, self._requested_control = self._engine_config, self._control
        self._instruction = self._control.instruction
        self._image = _Latest()
        self._joints = _Latest()
        self._health = _Health()
        self._rates_since = (time.monotonic(), 0, 0, 0)
        self._normalised_gripper = True
        self._last_hold_log = 0.0
        self._kinematics_note = "not loaded"

        self._tick = threading.Event()  # set by the control timer, consumed by the model thread
        self._model_thread: threading.Thread | None = None
        self.create_subscription(Image, "/camera/image_raw", self._on_image, SENSOR_QOS)
        self.create_subscription(JointState, "/joint_states", self._on_joints, SENSOR_QOS)
        # A volatile publisher is incompatible with the latched subscription by design (the
        # volatile one serves it): no warning for that pairing.
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)
        self.create_subscription(
            String, "~/instruction", self._on_instruction, LATCHED_QOS, event_callbacks=quiet
        )
        self.create_subscription(String, "~/instruction", self._on_instruction, COMMAND_QOS)
        self._twist_pub = self.create_publisher(TwistStamped, "~/delta_twist_cmds", COMMAND_QOS)
        self._gripper_pub = self.create_publisher(Float64, "~/gripper_command", COMMAND_QOS)
        self._stats_pub = self.create_publisher(DecodeStats, "~/decode_stats", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._control_timer = None
        self.create_timer(1.0, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._accept_parameters)

        autostart = self.get_parameter("autostart").value
        if autostart and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # --- parameters -----------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        defaults = (
            (ENGINE_PARAMS, EngineConfig()),
            (CONTROL_PARAMS, ControlConfig()),
            (MODEL_PARAMS, ModelConfig()),
        )
        for params, config in defaults:
            for param in params:
                value = params_of(config, (param,))[param.name]
                self.declare_parameter(param.name, _ros_value(value), _descriptor(param, value))
        self.declare_parameter(
            "autostart",
            False,
            ParameterDescriptor(
                description="configure and activate at start-up (false on hardware)",
                read_only=True,
            ),
        )

    def _values(self, params: tuple[Param, ...]) -> dict[str, object]:
        out = {}
        for param in params:
            value = self.get_parameter(param.name).value
            out[param.name] = _from_ros(value)
        return out

    def _configs_from_parameters(self) -> tuple[EngineConfig, ControlConfig]:
        engine = config_from_params(EngineConfig(), ENGINE_PARAMS, self._values(ENGINE_PARAMS))
        control = config_from_params(ControlConfig(), CONTROL_PARAMS, self._values(CONTROL_PARAMS))
        return engine, control

    def _split(self, parameters) -> tuple[dict, dict]:
        engine_names = {p.name for p in ENGINE_PARAMS}
        control_names = {p.name for p in CONTROL_PARAMS}
        engine, control = {}, {}
        for parameter in parameters:
            value = _from_ros(parameter.value)
            if parameter.name in engine_names:
                engine[parameter.name] = value
            elif parameter.name in control_names:
                control[parameter.name] = value
        return engine, control

    def _validate_parameters(self, parameters) -> SetParametersResult:
        """Refuse, with the reason, any change that would make the next step invalid."""
        engine, control = self._split(parameters)
        with self._lock:
            requested = config_from_params(self._requested_engine, ENGINE_PARAMS, engine)
            # Once configured, the engine also knows what it lacks (a datastore for heisd).
            engine_now = self._engine
            reasons = engine_now.problems(requested) if engine_now else requested.problems()
            reasons += config_from_params(
                self._requested_control, CONTROL_PARAMS, control
            ).problems()
        if reasons:
            self.get_logger().warning("parameter change refused: " + "; ".join(reasons))
        return SetParametersResult(successful=not reasons, reason="; ".join(reasons))

    def _accept_parameters(self, parameters) -> None:
        """Stage accepted changes; the control loop adopts them at the start of its next step."""
        engine, control = self._split(parameters)
        with self._lock:
            self._requested_engine = config_from_params(
                self._requested_engine, ENGINE_PARAMS, engine
            )
            self._requested_control = config_from_params(
                self._requested_control, CONTROL_PARAMS, control
            )
            if "instruction" in control:
                self._instruction = control["instruction"]

    def _adopt_requested(self) -> None:
        with self._lock:
            engine, control = self._requested_engine, self._requested_control
        if engine != self._engine_config and self._engine is not None:
            self._engine.configure(engine)
            self.get_logger().info(f"decoding settings now {engine}")
        self._engine_config = engine
        if control.control_rate_hz != self._control.control_rate_hz and self._control_timer:
            self._control_timer.timer_period_ns = int(control.period_s * 1e9)
        motion_changed = (control.joint_names, control.control_rate_hz) != (
            self._control.joint_names,
            self._control.control_rate_hz,
        )
        self._control = control
        if motion_changed and self._engine is not None:
            self._engine.set_kinematics(self._load_kinematics(), control.period_s)

    def _load_kinematics(self):
        """The arm's kinematics for kerv, or None with a warning.

        Without them kerv's filter runs on executed actions alone (flagged in diagnostics);
        every other mode is unaffected.
        """
        model = config_from_params(ModelConfig(), MODEL_PARAMS, self._values(MODEL_PARAMS))
        try:
            from kerv_ros.kinematics import ArmKinematics

            kinematics = ArmKinematics(self._control.joint_names, model.urdf, model.ee_frame)
        except Exception as err:  # a robot description that fails must not stop the arm
            self._kinematics_note = f"kinematics unavailable: {type(err).__name__}: {err}"
            self.get_logger().warning(f"{self._kinematics_note}; kerv uses executed actions only")
            return None
        self._kinematics_note = f"{kinematics.urdf.name}, frame {model.ee_frame}"
        return kinematics

    # --- lifecycle ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from kerv_ros.loading import load_models
        from kerv_ros.policy.openvla import peak_rss_mib

        model = config_from_params(ModelConfig(), MODEL_PARAMS, self._values(MODEL_PARAMS))
        try:
            self._engine_config.validate()
            self._control.validate()
            if model.torch_threads > 0:
                torch.set_num_threads(model.torch_threads)
            start = time.perf_counter()
            loaded = load_models(model, draft=self._engine_config.draft)
            backend = loaded.backend
            self.get_logger().info(
                f"loaded {model.model!r} ({type(backend).__name__}, "
                f"{backend.lm_head.weight.dtype} on {backend.device}) in "
                f"{time.perf_counter() - start:.1f} s; peak RSS {peak_rss_mib():.0f} MiB"
            )
            self._engine = DecodeEngine(
                backend,
                loaded.drafter,
                self._engine_config,
                self._load_kinematics(),
                self._control.period_s,
                loaded.datastore,
            )
            # One step on a blank image: lazy initialisation (allocator, kernels) happens here,
            # not in the first command the arm receives.
            blank = np.full((64, 64, 3), 128, np.uint8)
            joints = np.zeros(len(self._control.joint_names))
            self._engine.step(Observation(blank, "warm up", joints))
        except Exception as err:  # a model that fails to load must not take the node down
            reason = f"configure failed: {type(err).__name__}: {err}"
            self.get_logger().error(reason)
            self._set_error(reason, DiagnosticStatus.ERROR)
            return TransitionCallbackReturn.FAILURE
        self._normalised_gripper = not bool(np.asarray(backend.norm_stats.mask)[6])
        store = self._engine.datastore
        self.get_logger().info(
            f"configured: model {model.model!r}, mode {self._engine_config.mode}, "
            f"datastore {f'{len(store)} steps' if store is not None else 'none'}"
        )
        self._set_error("", DiagnosticStatus.OK)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._command_lock:
            self._active = True
        self._tick.clear()
        self._model_thread = threading.Thread(target=self._model_loop, name="kerv_model")
        self._model_thread.start()
        self._control_timer = self.create_timer(self._control.period_s, self._tick.set)
        self.get_logger().info(f"active: commanding at {self._control.control_rate_hz} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("deactivated")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._engine = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("shutting down")
        self._engine = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("error")
        return TransitionCallbackReturn.SUCCESS

    def stop(self, why: str) -> None:
        """Stop commanding: no step publishes after this, and the arm gets one zero twist."""
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        with self._command_lock:
            was_active = self._active
            self._active = False
            self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
        if self._model_thread is not None:
            self._tick.set()  # wake the model thread so it sees it must stop
            self._model_thread.join(timeout=30.0)
            self._model_thread = None
        if was_active:
            self.get_logger().info(f"{why}: zero twist sent, commanding stopped")

    # --- inputs ---------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._image = _Latest(msg, time.monotonic(), self._image.count + 1)

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints = _Latest(msg, time.monotonic(), self._joints.count + 1)

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            changed = msg.data != self._instruction
            self._instruction = msg.data
        if changed:  # a latched message reaches both subscriptions
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _fresh_inputs(self) -> tuple[Observation, ros_io.JointSample]:
        """Newest image, joints and instruction, or InputError saying what is wrong."""
        with self._lock:
            image, joints, instruction = self._image, self._joints, self._instruction
        now = time.monotonic()
        limit = self._control.stale_timeout_s
        for name, latest in (("camera image", image), ("joint_states", joints)):
            if latest.msg is None:
                raise ros_io.StaleInputError(f"no {name} received yet")
            age = now - latest.received
            if age > limit:
                raise ros_io.StaleInputError(f"{name} is {age:.2f} s old (stale_timeout_s {limit})")
        if not instruction.strip():
            raise ros_io.StaleInputError("no instruction (topic ~/instruction or parameter)")
        sample = ros_io.joint_sample(joints.msg, self._control.joint_names)
        rgb = ros_io.image_to_rgb(image.msg)
        # The reading's own stamp times finite differences; drivers that leave it zero get
        # the time it arrived.
        stamp = ros_io.stamp_seconds(joints.msg.header.stamp) or joints.received
        observation = Observation(
            rgb, instruction, sample.positions, sample.velocities, stamp=stamp
        )
        return observation, sample

    # --- the control loop -----------------------------------------------------------------

    def _model_loop(self) -> None:
        """The model thread: one control step per timer tick while active."""
        while self._active:
            if not self._tick.wait(timeout=0.5):
                continue
            self._tick.clear()
            if self._active:
                self._control_tick()

    def _control_tick(self) -> None:
        if self._engine is None:
            return
        start = time.perf_counter()
        self._adopt_requested()
        try:
            observation, joints = self._fresh_inputs()
        except ros_io.StaleInputError as err:
            self._hold(str(err), DiagnosticStatus.WARN)
            return
        except ros_io.InputError as err:
            self._hold(str(err), DiagnosticStatus.ERROR)
            return
        except ValueError as err:  # Observation's own checks (image too small, ...)
            self._hold(f"bad observation: {err}", DiagnosticStatus.ERROR)
            return
        try:
            result = self._engine.step(observation)
        except Exception as err:  # decoding must never take the node down
            self._hold(f"decode failed: {type(err).__name__}: {err}", DiagnosticStatus.ERROR)
            return
        linear, angular = ros_io.action_to_twist(
            result.raw_action,
            self._control.period_s,
            self._control.max_linear_speed,
            self._control.max_angular_speed,
        )
        with self._command_lock:
            if not self._active:
                return
            self._twist_pub.publish(self._twist(linear, angular))
            gripper = ros_io.gripper_opening(result.raw_action, self._normalised_gripper)
            self._gripper_pub.publish(Float64(data=gripper))
        self._stats_pub.publish(self._stats(result))
        elapsed_ms = (time.perf_counter() - start) * 1e3
        health = self._health
        health.steps += 1
        health.step_ms.append(result.timings.total_ms)
        health.overhead_ms.append(elapsed_ms - result.timings.total_ms)
        if elapsed_ms > self._control.period_s * 1e3:
            health.overruns += 1
        health.note = joints.velocity_note
        health.twist_source = result.twist_source
        self._set_error("", DiagnosticStatus.OK)

    def _hold(self, reason: str, level: bytes) -> None:
        """Zero twist and the reason, instead of a command from bad or old data."""
        with self._command_lock:
            if self._active:
                self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
        self._health.holds += 1
        now = time.monotonic()
        # Once per second for a persisting reason, at once for a new one.
        if reason != self._health.current or now - self._last_hold_log > 1.0:
            self.get_logger().warning(f"zero twist: {reason}")
            self._last_hold_log = now
        self._set_error(reason, level)

    def _set_error(self, reason: str, level: bytes) -> None:
        if reason:
            self._health.last_error = reason
        self._health.error_level = level
        self._health.current = reason

    def _twist(self, linear: np.ndarray, angular: np.ndarray) -> TwistStamped:
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self._control.command_frame
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = map(float, linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = map(float, angular)
        return msg

    def _stats(self, result: StepResult) -> DecodeStats:
        msg = DecodeStats()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self._control.command_frame
        msg.mode = result.mode
        msg.tokens = [int(t) for t in result.tokens]
        msg.token_sources = [int(s) for s in result.sources]
        msg.action = [float(a) for a in result.action]
        msg.accepted_lengths = [int(n) for n in result.accepted_lengths]
        msg.target_forwards = result.target_forwards
        msg.draft_forwards = result.draft_forwards
        msg.threshold = float(result.threshold)
        msg.compensated_dims = [int(d) for d in result.compensated_dims]
        msg.verify_skipped = result.verify_skipped
        t = result.timings
        msg.prefill_ms, msg.draft_ms, msg.verify_ms = t.prefill_ms, t.draft_ms, t.verify_ms
        msg.other_ms, msg.total_ms = t.other_ms, t.total_ms
        return msg

    # --- diagnostics ----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        health = self._health
        since, steps0, images0, joints0 = self._rates_since
        span = max(now - since, 1e-6)
        with self._lock:
            image, joints = self._image, self._joints
        self._rates_since = (now, health.steps, image.count, joints.count)
        step_ms = np.array(health.step_ms) if health.step_ms else np.zeros(1)
        overhead = np.array(health.overhead_ms) if health.overhead_ms else np.zeros(1)
        state = self._state_machine.current_state[1]
        current = health.current
        level = health.error_level if current else DiagnosticStatus.OK
        if level == DiagnosticStatus.OK and health.note:
            level = DiagnosticStatus.WARN
        status = DiagnosticStatus(
            level=level,
            name="kerv_node: decoding",
            hardware_id=self.get_fully_qualified_name(),
            message=current or health.note or f"{state}, {self._engine_config.mode}",
        )
        values = {
            "state": state,
            "mode": self._engine_config.mode,
            "step_rate_hz": f"{(health.steps - steps0) / span:.2f}",
            "image_rate_hz": f"{(image.count - images0) / span:.2f}",
            "joint_rate_hz": f"{(joints.count - joints0) / span:.2f}",
            "image_age_s": f"{now - image.received:.3f}" if image.msg else "never",
            "joint_age_s": f"{now - joints.received:.3f}" if joints.msg else "never",
            "steps": str(health.steps),
            "zero_twists": str(health.holds),
            "overruns": str(health.overruns),
            "step_ms_p50": f"{np.percentile(step_ms, 50):.2f}",
            "step_ms_p90": f"{np.percentile(step_ms, 90):.2f}",
            "step_ms_p99": f"{np.percentile(step_ms, 99):.2f}",
            "node_overhead_ms_p50": f"{np.percentile(overhead, 50):.2f}",
            "node_overhead_ms_p99": f"{np.percentile(overhead, 99):.2f}",
            "last_error": health.last_error,
            "kinematics": self._kinematics_note,
            "twist_source": health.twist_source,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """``ros2 run kerv_ros kerv_node`` / ``kerv-node``: spin until interrupted.

    rclpy's own signal handlers would shut the context down before the node could publish its
    last zero twist, so SIGINT and SIGTERM are turned into KeyboardInterrupt here instead, and
    the node stops the arm before rclpy shuts down.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _interrupt)
    node = KervNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if rclpy.ok():
            node.stop("interrupted")
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
