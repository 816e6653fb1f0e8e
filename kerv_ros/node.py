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
import gc
import re
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

from kerv_ros import control, ros_io
from kerv_ros.actions import GRIPPER
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
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
STALL_PERIODS = 3  # no tick finished for this many control periods while active: an ERROR


@dataclass
class _Latest:
    """The newest message of a topic and when it arrived (monotonic seconds)."""

    msg: object = None
    received: float = 0.0
    count: int = 0
    problem: str = ""  # found in the callback: the next tick holds with it, not the last good


class _CauseThrottle:
    """Rate-limits log lines by cause: a reason with its numbers blanked out (an age, a count).

    The first line of a cause goes out at once; then at most one per ``period_s``, saying how
    many were held back since, so a stale stream at the control rate is one line per second.
    """

    def __init__(self, period_s: float, causes: int = 64) -> None:
        self.period_s = period_s
        self.causes = causes
        self._seen: dict[str, tuple[float, int]] = {}

    def admit(self, reason: str) -> str:
        """The line to log now, or '' when this cause was logged less than a period ago."""
        cause = re.sub(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", reason)
        now = time.monotonic()
        last, held = self._seen.get(cause, (-1e9, 0))
        if now - last < self.period_s:
            self._seen[cause] = (last, held + 1)
            return ""
        if len(self._seen) >= self.causes and cause not in self._seen:
            self._seen.pop(next(iter(self._seen)))
        self._seen[cause] = (now, 0)
        return f"{reason} ({held} more like it in the last {now - last:.1f} s)" if held else reason


@dataclass
class _Health:
    """What /diagnostics reports; written by the control loop, read once a second."""

    steps: int = 0
    holds: int = 0
    watchdog_zeros: int = 0  # zero twists sent by the timer while a step overran
    overruns: int = 0
    step_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    overhead_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    current: str = ""  # why the last tick held, "" when it commanded
    last_error: str = ""
    error_level: bytes = DiagnosticStatus.OK
    note: str = ""  # a warning that does not stop commanding (e.g. no joint velocities)
    twist_source: str = ""  # kerv: where the last step's measured motion came from
    precisions: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    """The verifier's precision on each recent step (dyq switches it), newest last."""


def _shares(names) -> str:
    """``float32 0.70, int8 0.30``: how the recent steps divide among precisions."""
    names = list(names)
    if not names:
        return "-"
    return ", ".join(f"{n} {names.count(n) / len(names):.2f}" for n in sorted(set(names)))


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
        self._instruction_problem = ""
        self._instruction_received = self._instruction  # the last text seen on the topic
        self._image = _Latest()
        self._joints = _Latest()
        self._health = _Health()
        self._rates_since = (time.monotonic(), 0, 0, 0, 0)
        self._normalised_gripper = True
        self._hold_log = _CauseThrottle(1.0)
        self._kinematics_note = "not loaded"
        self._kinematics = None  # ArmKinematics of the configured joints, when loaded
        # What joint_names must be, once configured (the policy's state size, the URDF chain).
        self._joint_rule: ros_io.JointRule | None = None

        # One model thread for the node's whole life (started at the first activate): the
        # control timer only wakes it. A transition never waits for a step in progress; a step
        # that outlives its activation or its inputs' freshness is never published.
        self._tick = threading.Event()
        self._model_thread: threading.Thread | None = None
        self._closing = False
        self._generation = 0  # counts activations: a step publishes only in its own
        self._busy_since: float | None = None  # monotonic start of the step in progress
        self._last_tick_done = time.monotonic()
        self._active_since = 0.0
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
            requested_control = config_from_params(self._requested_control, CONTROL_PARAMS, control)
            reasons += requested_control.problems()
            if self._joint_rule is not None and "joint_names" in control:
                reasons += self._joint_rule.problems(requested_control.joint_names)
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
                self._instruction_problem = ""
                self._instruction_received = None  # the topic's next message applies again
        if "control_rate_hz" in control and self._control_timer is not None:
            # A new timer at once: changing a timer's period takes effect only after its current
            # period, which at 0.5 Hz is two seconds of silence.
            self.destroy_timer(self._control_timer)
            self._control_timer = self.create_timer(
                1.0 / control["control_rate_hz"], self._on_control_timer
            )
        if control.get("hold"):  # at once, not at the next tick
            with self._command_lock:
                if self._active:
                    self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
            self.get_logger().warning("hold: zero twist sent, commanding paused")

    def _held(self) -> bool:
        with self._lock:
            return self._requested_control.hold

    def _adopt_requested(self) -> None:
        with self._lock:
            engine, control = self._requested_engine, self._requested_control
        if engine != self._engine_config and self._engine is not None:
            self._engine.configure(engine)
            self.get_logger().info(
                f"decoding settings changed: {_changes(self._engine_config, engine)}"
            )
        self._engine_config = engine
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
            self._kinematics = None
            return None
        self._kinematics_note = f"{kinematics.urdf.name}, frame {model.ee_frame}"
        self._kinematics = kinematics
        return kinematics

    # --- lifecycle ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from kerv_ros.loading import load_models, verifier_text
        from kerv_ros.policy.openvla import peak_rss_mib

        model = config_from_params(ModelConfig(), MODEL_PARAMS, self._values(MODEL_PARAMS))
        with self._lock:  # what `ros2 param get` says now is what configure uses
            self._engine_config, self._control = self._requested_engine, self._requested_control
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
                f"{time.perf_counter() - start:.1f} s; peak RSS {peak_rss_mib():.0f} MiB; "
                f"verifier {verifier_text(backend)}"
            )
            kinematics = self._load_kinematics()
            rule = ros_io.JointRule(
                kinematics.chain if kinematics is not None else None, backend.state_dim
            )
            ros_io.raise_problems(rule.problems(self._control.joint_names))
            self._engine = DecodeEngine(
                backend,
                loaded.drafter,
                self._engine_config,
                kinematics,
                self._control.period_s,
                loaded.datastore,
            )
            self._joint_rule = rule
            # One step on a blank image: lazy initialisation (allocator, kernels) happens here,
            # not in the first command the arm receives.
            blank = np.full((64, 64, 3), 128, np.uint8)
            joints = np.zeros(len(self._control.joint_names))
            self._engine.step(Observation(blank, "warm up", joints))
            # The model, transformers and the engine are some 380k objects the collector would
            # traverse in every full collection (173 ms measured with the default model): a
            # stall the control loop cannot take. They live as long as the node: frozen out.
            gc.collect()
            gc.freeze()
        except Exception as err:  # a model that fails to load must not take the node down
            self._engine = None
            reason = f"configure failed: {type(err).__name__}: {err}"
            self.get_logger().error(reason)
            self._set_error(reason, ERROR)
            return TransitionCallbackReturn.FAILURE
        self._normalised_gripper = not bool(np.asarray(backend.norm_stats.mask)[GRIPPER])
        store = self._engine.datastore
        self.get_logger().info(
            f"configured: model {model.model!r}, mode {self._engine_config.mode}, "
            f"datastore {f'{len(store)} steps' if store is not None else 'none'}"
        )
        self._set_error("", OK)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._ensure_model_thread()
        with self._command_lock:
            self._active = True
            self._generation += 1
        self._active_since = self._last_tick_done = time.monotonic()
        self._tick.clear()
        self._control_timer = self.create_timer(self._control.period_s, self._on_control_timer)
        self.get_logger().info(f"active: commanding at {self._control.control_rate_hz} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("deactivated")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._engine = None
        self._joint_rule = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("shutting down")
        self._engine = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop("error")
        return TransitionCallbackReturn.SUCCESS

    def stop(self, why: str) -> None:
        """Stop commanding at once: one zero twist, and no step publishes after this.

        It does not wait for a step in progress: that step belongs to an ended activation and
        is dropped when it finishes.
        """
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        with self._command_lock:
            was_active = self._active
            self._active = False
            self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
        self._health.note = ""
        if was_active:
            self.get_logger().info(f"{why}: zero twist sent, commanding stopped")

    def close(self) -> None:
        """End the model thread (it exits after the step in progress, if any)."""
        self._closing = True
        self._tick.set()

    def _ensure_model_thread(self) -> None:
        if self._model_thread is None or not self._model_thread.is_alive():
            self._model_thread = threading.Thread(
                target=self._model_loop, name="kerv_model", daemon=True
            )
            self._model_thread.start()

    # --- inputs ---------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        problem = ros_io.quick_image_problem(msg)  # size-independent: a bad frame is seen now
        with self._lock:
            self._image = _Latest(msg, time.monotonic(), self._image.count + 1, problem)

    def _on_joints(self, msg: JointState) -> None:
        problem = ros_io.quick_joints_problem(msg)
        with self._lock:
            self._joints = _Latest(msg, time.monotonic(), self._joints.count + 1, problem)

    def _on_instruction(self, msg: String) -> None:
        problem = ros_io.instruction_problem(msg.data)
        with self._lock:
            changed = msg.data != self._instruction_received
            self._instruction_received = msg.data
            self._instruction = "" if problem else msg.data
            self._instruction_problem = problem
        if not changed:  # a latched message reaches both subscriptions: taken once
            return
        if problem:
            self.get_logger().error(problem)
        else:
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _fresh_inputs(self) -> tuple[Observation, ros_io.JointSample, float]:
        """Newest image, joints and instruction, and when the older of the two arrived.

        Raises InputError saying what is wrong instead.
        """
        with self._lock:
            image, joints, instruction = self._image, self._joints, self._instruction
            instruction_problem = self._instruction_problem
        now = time.monotonic()
        limit = self._control.stale_timeout_s
        clock = self.get_clock().now().nanoseconds * 1e-9
        for name, latest in (("camera image", image), ("joint_states", joints)):
            if latest.msg is None:
                raise ros_io.StaleInputError(f"no {name} received yet")
            if latest.problem:
                raise ros_io.InputError(latest.problem)
            age = now - latest.received
            if age > limit:
                raise ros_io.StaleInputError(f"{name} is {age:.2f} s old (stale_timeout_s {limit})")
            ros_io.check_stamp(
                name, latest.msg.header.stamp, clock, self._control.stamp_tolerance_s
            )
        if instruction_problem:
            raise ros_io.InputError(instruction_problem)
        if not instruction.strip():
            raise ros_io.StaleInputError("no instruction (topic ~/instruction or parameter)")
        sample = ros_io.joint_sample(joints.msg, self._control.joint_names)
        kinematics = self._kinematics
        if kinematics is not None and kinematics.joint_names == self._control.joint_names:
            problem = kinematics.limit_problem(sample.positions, sample.velocities)
        else:  # no robot description: still refuse what no arm can read
            problem = ros_io.generic_limit_problem(sample.positions, sample.velocities)
        if problem:
            raise ros_io.InputError(problem)
        rgb = ros_io.image_to_rgb(image.msg)
        # The reading's own stamp times finite differences; drivers that leave it zero get
        # the time it arrived.
        stamp = ros_io.stamp_seconds(joints.msg.header.stamp) or joints.received
        observation = Observation(
            rgb, instruction, sample.positions, sample.velocities, stamp=stamp
        )
        return observation, sample, min(image.received, joints.received)

    # --- the control loop -----------------------------------------------------------------

    def _model_loop(self) -> None:
        """The model thread: one control step per timer tick while active, for the node's life.

        Whatever a step raises is a zero twist with the reason, never the end of the thread.
        """
        while not self._closing:
            if not self._tick.wait(timeout=0.5):
                continue
            self._tick.clear()
            if not self._active or self._closing:
                continue
            generation = self._generation
            self._busy_since = time.monotonic()
            try:
                self._control_tick(generation)
            except Exception as err:  # the arm must get a zero and the loop go on
                self._hold(f"control step failed: {type(err).__name__}: {err}", ERROR)
            finally:
                self._busy_since = None
                self._last_tick_done = time.monotonic()

    def _on_control_timer(self) -> None:
        """Executor side of the control loop: wake the model thread, or stop the arm itself.

        While a step runs longer than ``stale_timeout_s`` (its inputs are stale by then), zero
        twists go out from here at the control rate; a dead model thread is an ERROR with zero
        twists too. Otherwise the model thread takes the tick.
        """
        if self._model_thread is None or not self._model_thread.is_alive():
            self._watchdog_hold("model thread is not running: restart the node", ERROR)
            return
        busy = self._busy_since
        if busy is None:
            self._tick.set()
            return
        running = time.monotonic() - busy
        if running > self._control.stale_timeout_s:
            self._watchdog_hold(
                f"step running for {running:.2f} s (over stale_timeout_s "
                f"{self._control.stale_timeout_s}): holding until it ends",
                WARN,
            )

    def _watchdog_hold(self, reason: str, level: bytes) -> None:
        with self._command_lock:
            if self._active:
                self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
        self._health.watchdog_zeros += 1
        self._log_hold(reason)
        self._set_error(reason, level)

    def _control_tick(self, generation: int) -> None:
        if self._engine is None:
            return
        start = time.perf_counter()
        self._adopt_requested()
        if self._control.hold:
            self._hold("held (parameter hold is true)", WARN)
            return
        try:
            observation, joints, received = self._fresh_inputs()
        except ros_io.StaleInputError as err:
            self._hold(str(err), WARN)
            return
        except ros_io.InputError as err:
            self._hold(str(err), ERROR)
            return
        except ValueError as err:  # Observation's own checks (image too small, ...)
            self._hold(f"bad observation: {err}", ERROR)
            return
        try:
            result = self._engine.step(observation)
        except Exception as err:  # decoding must never take the node down
            self._hold(f"decode failed: {type(err).__name__}: {err}", ERROR)
            return
        linear, angular = control.action_to_twist(
            result.raw_action,
            self._control.period_s,
            self._control.max_linear_speed,
            self._control.max_angular_speed,
        )
        stale = ""
        with self._command_lock:
            if not self._active or generation != self._generation or self._held():
                return  # computed in an activation that has ended, or held: never published
            age = time.monotonic() - received
            if age > self._control.stale_timeout_s:
                stale = (
                    f"step took {age:.2f} s: its inputs are older than stale_timeout_s "
                    f"{self._control.stale_timeout_s}, command dropped"
                )
                self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
            else:
                self._twist_pub.publish(self._twist(linear, angular))
                gripper = control.gripper_opening(result.raw_action, self._normalised_gripper)
                self._gripper_pub.publish(Float64(data=gripper))
        if stale:
            self._health.holds += 1
            self._log_hold(stale)
            self._set_error(stale, WARN)
            return
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
        health.precisions.append(result.precision)
        self._set_error("", OK)

    def _hold(self, reason: str, level: bytes) -> None:
        """Zero twist and the reason, instead of a command from bad or old data."""
        with self._command_lock:
            if self._active:
                self._twist_pub.publish(self._twist(np.zeros(3), np.zeros(3)))
        self._health.holds += 1
        self._log_hold(reason)
        self._set_error(reason, level)

    def _log_hold(self, reason: str) -> None:
        """One line per cause per second at most, with how many were not logged meanwhile."""
        line = self._hold_log.admit(reason)
        if line:
            self.get_logger().warning(f"zero twist: {line}")

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
        msg.precision = result.precision
        t = result.timings
        msg.prefill_ms, msg.draft_ms, msg.verify_ms = t.prefill_ms, t.draft_ms, t.verify_ms
        msg.other_ms, msg.total_ms = t.other_ms, t.total_ms
        return msg

    # --- diagnostics ----------------------------------------------------------------------

    def _stall(self, now: float, tick_rate: float, span: float) -> str:
        """Why the control loop is not keeping up while active ('' when it is)."""
        if not self._active or now - self._active_since < 2.0:
            return ""
        if self._model_thread is None or not self._model_thread.is_alive():
            return "model thread is not running: nothing is decoded (zero twists sent)"
        period = self._control.period_s
        busy = self._busy_since
        if busy is not None and now - busy > STALL_PERIODS * period:
            return f"control loop stalled: a step has run for {now - busy:.2f} s"
        idle = now - self._last_tick_done
        if busy is None and idle > STALL_PERIODS * period:
            return f"control loop stalled: no tick for {idle:.2f} s"
        rate = self._control.control_rate_hz
        if span >= 0.9 and tick_rate < 0.5 * rate:
            return f"control loop at {tick_rate:.2f} Hz, far below control_rate_hz {rate}"
        return ""

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        health = self._health
        since, steps0, ticks0, images0, joints0 = self._rates_since
        span = max(now - since, 1e-6)
        with self._lock:
            image, joints = self._image, self._joints
            mode = self._requested_engine.mode  # what `ros2 param get` says and the next step uses
        ticks = health.steps + health.holds
        self._rates_since = (now, health.steps, ticks, image.count, joints.count)
        step_ms = np.array(health.step_ms) if health.step_ms else np.zeros(1)
        overhead = np.array(health.overhead_ms) if health.overhead_ms else np.zeros(1)
        state = self._state_machine.current_state[1]
        current = health.current
        level = health.error_level if current else OK
        if level == OK and health.note:
            level = WARN
        stall = self._stall(now, (ticks - ticks0) / span, span)
        if stall:
            level, current = ERROR, stall
        status = DiagnosticStatus(
            level=level,
            name="kerv_node: decoding",
            hardware_id=self.get_fully_qualified_name(),
            message=_bounded(current or health.note or f"{state}, {mode}"),
        )
        values = {
            "state": state,
            "mode": mode,
            "step_rate_hz": f"{(health.steps - steps0) / span:.2f}",
            "tick_rate_hz": f"{(ticks - ticks0) / span:.2f}",
            "watchdog_zero_twists": str(health.watchdog_zeros),
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
            "last_error": _bounded(health.last_error),
            "kinematics": self._kinematics_note,
            "precision": health.precisions[-1] if health.precisions else "-",
            "precision_share": _shares(health.precisions),
            "precision_map": self._engine.precision_policy.map_source if self._engine else "-",
            "twist_source": health.twist_source,
        }
        status.values = [KeyValue(key=k, value=_bounded(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _bounded(text: str, limit: int = 400) -> str:
    """Diagnostics stay small whatever an input held: long reasons are cut, with a count."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more chars)"


def _changes(old: EngineConfig, new: EngineConfig) -> str:
    """``name old -> new`` for each parameter that differs (not the whole configuration)."""
    before, after = params_of(old, ENGINE_PARAMS), params_of(new, ENGINE_PARAMS)
    return ", ".join(f"{k} {before[k]!r} -> {after[k]!r}" for k in after if after[k] != before[k])


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """``ros2 run kerv_ros kerv_node`` / ``kerv-node``: spin until interrupted.

    rclpy's own signal handlers would shut the context down before the node could publish its
    last zero twist, so SIGINT and SIGTERM are turned into KeyboardInterrupt here instead, and
    the node stops the arm before rclpy shuts down. Nothing that arrives ends the process: an
    exception out of a callback (rclpy's own parameter service raises on a request with an
    unknown parameter type) is logged and spinning goes on. The exit does not wait for a model
    step in progress (the model thread is a daemon).
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Ctrl-C must still work.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = KervNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    throttle = _CauseThrottle(1.0)
    try:
        while rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                raise
            except Exception as err:  # a request or message must never end the node
                line = throttle.admit(f"{type(err).__name__} in a callback: {err}")
                if line:
                    node.get_logger().error(f"refused: {line}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if rclpy.ok():
            node.stop("interrupted")
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
