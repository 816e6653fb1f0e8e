"""Configuration of the engine, the control loop and the model, as dataclasses.

Each value lives here once. A setting that is a ROS parameter is declared with :func:`param`,
which keeps its description and allowed range on the field itself; the parameter tables
(``ENGINE_PARAMS``, ``CONTROL_PARAMS``, ``MODEL_PARAMS``) are generated from the fields and give
every setting its flat name (the ROS parameter of ``config/kerv.yaml``). The node declares its
parameters from them, the CLI's ``--param`` maps onto the same dataclasses, and
:func:`problems` is the single place that decides whether a value is acceptable, so that a
refused ``ros2 param set`` and a refused command-line flag give the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import ClassVar

from kerv_ros.actions import ACTION_DIMS, N_BINS

MODES = ("ar", "spec", "spec_relaxed", "kerv", "heisd", "hybrid")
"""Decode modes this engine implements. ``ar`` is the greedy baseline; ``spec`` drafts with the
EAGLE-style head and accepts exactly; ``spec_relaxed`` accepts a draft token within
``relaxed_threshold`` bins of the verifier's (Spec-VLA); ``kerv`` is relaxed acceptance with a
threshold that follows the arm's motion, and Kalman-filter compensation of rejected dimensions;
``heisd`` drafts from the retrieval datastore or the drafter by a kinematic boundary, with
verify-skip and sequence-wise acceptance; ``hybrid`` is heisd with kerv's compensation and its
drafter steps also offered the retrieved continuations. What each mode does, feature by
feature, is the table of ``decoding/modes.py``."""

PANDA_ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_EE_FRAME = "panda_grasptarget"
"""Between the Panda's fingertips: the point the simulator moves and the policy aims at."""
MAX_INSTRUCTION_CHARS = 512
"""Longest instruction taken (topic or parameter). OpenVLA-style prompts are a sentence; the
prompt's tokens join the image patches in every prefill, so a long text makes every step slower
(10,000 characters were measured at 3.2 s a step). Longer ones are refused with the reason."""


@dataclass(frozen=True)
class Param:
    """One setting: flat name, where it lives in its dataclass, what it means, what it allows."""

    name: str
    path: tuple[str, ...]
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False


def param(
    default: object,
    description: str,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    read_only: bool = False,
):
    """A dataclass field that is also a ROS parameter: its meaning and range live with it.

    The flat name is the field's name after its class's ``PARAM_PREFIX`` (``kerv_r_min`` is
    ``EngineConfig.kerv.r_min``); :func:`params_table` collects them.
    """
    spec = Param("", (), description, low, high, choices, read_only)
    return field(default=default, metadata={"param": spec})


def params_table(cls: type, path: tuple[str, ...] = ()) -> tuple[Param, ...]:
    """Every parameter field of ``cls`` and of the configurations nested in it, in field order."""
    prefix = getattr(cls, "PARAM_PREFIX", "")
    table: list[Param] = []
    for f in fields(cls):
        spec = f.metadata.get("param")
        if spec is not None:
            table.append(replace(spec, name=prefix + f.name, path=(*path, f.name)))
        elif is_dataclass(f.default_factory):
            table.extend(params_table(f.default_factory, (*path, f.name)))
    return tuple(table)


@dataclass(frozen=True)
class DraftConfig:
    """Shape of the draft tree (EAGLE-2 style: expand the ``top_k`` best nodes per level).

    ``top_k = 1`` drafts a chain of ``depth`` tokens. Spec-VLA used depth 4, top-k 8 and 50
    nodes; a 7-token action step can use at most 6 draft levels after the first token.
    """

    PARAM_PREFIX: ClassVar[str] = "draft_"

    depth: int = param(6, "draft tree depth (tokens ahead)", 1, 6)
    top_k: int = param(4, "nodes expanded per draft level (1 = chain)", 1, 32)
    node_budget: int = param(24, "draft tree size in nodes", 1, 256)


@dataclass(frozen=True)
class KalmanConfig:
    """The KERV filter over the end-effector motion in action units (``kalman.py``).

    Noise values are standard deviations in normalised action units (the [-1, 1] scale of the
    action tokens; one bin is 2/255 ~ 0.008).
    """

    PARAM_PREFIX: ClassVar[str] = "kalman_"

    model: str = param("cv", "Kalman motion model: cv | ca", choices=("cv", "ca"))
    """``cv`` (state: action and its change per step) or ``ca`` (and the change of that)."""
    process_std: float = param(0.05, "Kalman process noise (action units per step)", 1e-06, 10.0)
    """How much the highest derivative of the state may change in one control period."""
    action_std: float = param(0.05, "Kalman noise of executed actions (action units)", 1e-06, 10.0)
    """An executed action as a measurement of the motion it commanded."""
    twist_std: float = param(0.05, "Kalman noise of the measured twist (action units)", 1e-06, 10.0)
    """The measured end-effector twist, converted to action units, as a measurement."""


@dataclass(frozen=True)
class KervConfig:
    """KERV (mode ``kerv``): kinematic dynamic threshold and Kalman compensation.

    The threshold for a step is ``r = lo + (hi - lo) * exp(-v)``, ``lo`` and ``hi`` the smaller
    and the larger of ``r_min`` and ``r_max`` (the two ends of the range, in either order: a
    non-atomic ``ros2 param load`` that moves both works whichever it sets first), with the
    kinematic variability ``v = w_speed * |m| + w_accel * |m - m_prev| + w_innovation *
    sqrt(nis)`` (m: the measured end-effector motion in action units, nis: the filter's mean
    normalised innovation squared), and ``r = lo`` for ``gripper_window`` steps after the
    gripper command changes.
    Slow, steady motion gets a wide threshold; fast or changing motion, a surprise to the filter
    or a grasp gets a narrow one.
    """

    PARAM_PREFIX: ClassVar[str] = "kerv_"

    dynamic_threshold: bool = param(
        True, "kerv: threshold follows the arm's motion (false = relaxed_threshold)"
    )
    """Off: the fixed ``relaxed_threshold`` (ablation)."""
    r_min: int = param(5, "kerv: narrowest threshold (bins)", 0, N_BINS - 1)
    r_max: int = param(15, "kerv: widest threshold (bins)", 0, N_BINS - 1)

    @property
    def narrowest(self) -> int:
        return min(self.r_min, self.r_max)

    @property
    def widest(self) -> int:
        return max(self.r_min, self.r_max)

    w_speed: float = param(0.5, "kerv: weight of motion speed", 0.0, 100.0)
    w_accel: float = param(2.0, "kerv: weight of motion change", 0.0, 100.0)
    w_innovation: float = param(0.5, "kerv: weight of the filter's innovation", 0.0, 100.0)
    gripper_window: int = param(3, "kerv: steps at r_min after a gripper change", 0, 100)
    compensation: bool = param(True, "kerv: fill rejected dimensions from the Kalman filter")
    """Fill the dimensions after a rejection from the filter instead of another target pass."""
    compensation_every: int = param(5, "kerv: at most one compensated step in this many", 1, 1000)
    """At most one compensated step in this many consecutive steps (KERV: intermittent)."""
    compensation_max_std: float = param(
        0.1, "kerv: compensate only below this predicted std (action units)", 0.0, 2.0
    )
    """Compensate only where the filter's predicted std is below this (action units)."""
    compensation_max_nis: float = param(
        9.0, "kerv: compensate only below this normalised innovation squared", 0.0, 1000.0
    )
    """... and the filter's last mean normalised innovation squared is below this."""
    kalman: KalmanConfig = field(default_factory=KalmanConfig)


RETRIEVAL_KEYS = ("motion", "scene")
"""What a datastore lookup matches (``heisd_retrieval_key``)."""


@dataclass(frozen=True)
class HeisdConfig:
    """HeiSD (modes ``heisd`` and ``hybrid``): retrieval, boundary, verify-skip, acceptance.

    The fused kinematic metric of a step (``boundary.py``) is
    ``M = w_speed * |m| + w_accel * |m - m_prev| + w_innovation * sqrt(nis)
    + w_neighbour * d_nn + w_gripper * [gripper changed within kerv_gripper_window]``
    with the measured motion m and the filter's NIS as for kerv, and d_nn the mean context
    distance of the retrieved neighbours (action units). ``M <= boundary``: the motion is
    familiar and retrieval drafts; above it the drafter does.
    """

    PARAM_PREFIX: ClassVar[str] = "heisd_"

    use_boundary: bool = param(True, "heisd: choose drafts by the metric")
    """Off: retrieval drafts whenever it has candidates (ablation)."""
    boundary_rule: str = param(
        "fused",
        "heisd: what chooses retrieval or the drafter: fused (the metric M) | curvature "
        "(HeiSD's radius of curvature and cumulative displacement of the end effector's path)",
        choices=("fused", "curvature"),
    )
    """``curvature``: HeiSD's own boundary, ``F = a * Norm(R) + (1 - a) * Norm(D)`` over the
    last ``curvature_window`` end-effector positions (R: radius of the circle fitted to them,
    D: path length; Norm(x) = min(x / ref, 1)); F at or above ``curvature_boundary`` (fast,
    straight motion) drafts from retrieval, below it (slow or curving) the drafter. Verify-skip
    still reads M."""
    curvature_window: int = param(15, "heisd curvature rule: positions in the window", 3, 64)
    curvature_alpha: float = param(
        0.5, "heisd curvature rule: weight of the radius against the displacement", 0.0, 1.0
    )
    radius_ref: float = param(
        0.5, "heisd curvature rule: radius (m) that counts as straight", 1e-6, 1000.0
    )
    displacement_ref: float = param(
        0.3,
        "heisd curvature rule: path length over the window (m) that counts as fast",
        1e-6,
        100.0,
    )
    curvature_boundary: float = param(
        0.5, "heisd curvature rule: F at or above -> retrieval", 0.0, 1.0
    )
    boundary: float = param(2.0, "heisd: metric at or below -> retrieval", 0.0, 100.0)
    w_speed: float = param(0.2, "heisd: weight of motion speed", 0.0, 100.0)
    w_accel: float = param(1.0, "heisd: weight of motion change", 0.0, 100.0)
    w_innovation: float = param(0.1, "heisd: weight of the filter's innovation", 0.0, 100.0)
    w_neighbour: float = param(
        5.0, "heisd: weight of the distance to the retrieved neighbours", 0.0, 100.0
    )
    w_gripper: float = param(1.0, "heisd: weight of a gripper change", 0.0, 100.0)
    retrieval_key: str = param(
        "motion",
        "heisd: what a lookup matches: motion (the previous actions) | scene (the policy's "
        "own feature of the observation, from the prefill; needs a datastore built with "
        "--features)",
        choices=RETRIEVAL_KEYS,
    )
    """``motion``: the previous action and the xyz of the one before (what the arm was doing).
    ``scene``: HeiSD's key, the policy's own feature of this observation (its last-layer
    hidden state at the end of the prefix, cosine similarity): the same situation in another
    episode retrieves what was done there. Either way ``d_nn`` stays the motion distance."""
    neighbours: int = param(16, "heisd: neighbours per lookup", 1, 1024)
    """Datastore entries whose continuations are merged per lookup."""
    prefix_tolerance: int = param(
        2, "heisd: bins a stored step may differ from the step's tokens", 0, N_BINS - 1
    )
    """Bins by which a stored step may differ from the tokens the step already has."""
    node_budget: int = param(24, "heisd: retrieved tree size", 1, 256)
    """Draft tree size of a retrieved tree."""
    verify_skip: bool = param(True, "heisd: skip the verifier when familiar")
    skip_boundary: float = param(0.4, "heisd: metric at or below -> may skip", 0.0, 100.0)
    """Skip the verifier only where M is at most this (and below the boundary)."""
    skip_similarity: float = param(
        0.0,
        "heisd: with scene keys, skip where the neighbours' mean cosine similarity to the "
        "step's scene is at least this, instead of by the metric (0 = by the metric)",
        0.0,
        1.0,
    )
    """HeiSD's own verify-skip rule: the verifier's last-layer feature close to those of stored
    points. Calibrate it on recordings (``docs/benchmarks.md``: the audit pass rate per
    similarity); the neighbours must still agree and the audit still follows."""
    skip_min_count: int = param(8, "heisd: neighbours that must agree to skip", 1, 1024)
    """... and at least this many neighbours were found, all continuing within
    ``sequence_threshold`` of the most frequent continuation (unanimous up to what the
    sequence-wise rule would accept)."""
    max_skipped_run: int = param(1, "heisd: skipped steps in a row at most", 1, 100)
    """Skipped steps in a row at most; the next step is verified and audits the retrieval."""
    skip_cooldown: int = param(10, "heisd: steps without skipping after a failed audit", 0, 10000)
    """Steps without skipping after a verified step rejected the retrieved continuation."""
    acceptance: str = param("sequence", "heisd: sequence | token", choices=("sequence", "token"))
    """``sequence``: accept drafted tokens while their weighted distance to the verifier's,
    summed along the path, is at most ``sequence_threshold`` (action units); ``token``:
    token-wise ``|bin| <= relaxed_threshold`` (or kerv's dynamic threshold in ``hybrid``)."""
    sequence_threshold: float = param(
        0.1, "heisd: largest accepted weighted distance along a path (action units)", 0.0, 100.0
    )
    sequence_weights: tuple[float, ...] = param(
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0),
        "heisd: per-dimension weights of the sequence distance (7 values)",
    )
    """Per-dimension weights of the sequence-wise distance (the gripper counts double)."""


PRECISIONS = ("float32", "bfloat16", "int8", "int8_bf16", "int4_bf16", "phased")
"""Precisions a step can run at (``policy/precision.py``): the model's own (float32 on the CPU),
bfloat16 weights and activations, int8 weights with the model's activations, int8 weights with
bfloat16 activations (one int8 copy serves both), int4 weights with bfloat16 activations, and
``phased``: bfloat16 for wide forwards (prefill, wide verifies), int8_bf16 for narrow ones."""


PHASED_ROWS = 16
"""Rows (tokens) from which ``phased`` runs a forward at bfloat16 rather than int8_bf16 (the
default of ``dyq_phased_rows``): on the default model int8_bf16 wins a 7-node verify (1.32
against 1.60 ms) and loses a 24-node one (2.46 against 2.14 ms) and the prefill (8.90 against
5.69 ms); on a 134 M-parameter one bfloat16 already won at 7 (``kerv dyq profile`` tells)."""


@dataclass(frozen=True)
class DyqConfig:
    """DyQ-VLA (feature ``dyq`` of every mode): each step's precision from the arm's motion.

    Two proxies of how sensitive the step is to quantisation, from the measured end-effector
    motion m (action units per step; the tracker's, as kerv's): *motion fineness*
    ``F = speed_ref / (speed_ref + mean |m_xyz| over window_macro steps)`` (slow, fine
    translation -> 1) and *angular jerk* ``J = min(1, max |w_t - 2 w_(t-1) + w_(t-2)| over
    window_micro steps / jerk_ref)`` (w: the rotational part of m). Fused:
    ``S = max(0, fineness_weight * F + (1 - fineness_weight) * J)``. ``S >= full_above``: full
    precision; ``S < coarse_below``: ``coarse``; between: ``medium``. Raising precision is
    immediate; lowering waits ``min_dwell`` steps at the current one and needs ``S`` below the
    bound by ``hysteresis``. Full precision on the first ``warmup_steps`` of an episode, for
    ``gripper_window`` steps after a gripper change, and wherever the motion is not measured.
    ``kerv dyq calibrate`` measures each precision's action error against full precision,
    binned by S, into ``dyq.json`` beside the model; where that table holds (``table`` on, and
    calibrated with the live scoring parameters and precisions), it maps S instead of the two
    bounds: a bin runs at ``coarse`` where that precision's error is within ``error_bound``,
    else at ``medium`` where that one's is, else at full precision.
    """

    PARAM_PREFIX: ClassVar[str] = "dyq_"

    fixed: str = param(
        "",
        "dyq: hold this precision every step ('' = switch by motion)",
        choices=("", *PRECISIONS),
    )
    """An ablation: the variants' speed and error without the policy."""
    coarse: str = param("phased", "dyq: precision of coarse motion", choices=PRECISIONS)
    """``phased`` by default: on the demo bags it made ``ar`` 1.22-1.34x faster at an action error
    of 0.0002, where ``int8_bf16`` gave 1.07-1.13x at 0.0071 (docs/benchmarks.md)."""
    medium: str = param("int8", "dyq: precision between the bounds", choices=PRECISIONS)
    phased_rows: int = param(
        PHASED_ROWS, "dyq: rows from which phased runs a forward at bfloat16", 1, 4096
    )
    """The crossover of ``phased`` (``policy/precision.py``): forwards of this many tokens or
    more (the prefill, wide verifies) at bfloat16, narrower ones at int8_bf16."""
    coarse_below: float = param(0.25, "dyq: fused score below -> coarse", 0.0, 1.0)
    full_above: float = param(0.4, "dyq: fused score at or above -> full precision", 0.0, 1.0)
    fineness_weight: float = param(0.5, "dyq: weight of motion fineness (1 - it: jerk)", 0.0, 1.0)
    speed_ref: float = param(
        0.05, "dyq: translation (action units/step) of fineness 0.5", 1e-6, 10.0
    )
    jerk_ref: float = param(0.05, "dyq: angular jerk (action units) of jerk score 1", 1e-6, 10.0)
    table: bool = param(True, "dyq: map scores through dyq.json beside the model where it holds")
    error_bound: float = param(
        0.004, "dyq: largest calibrated action error a bin may run below full precision", 0.0, 2.0
    )
    """Mean |action - full-precision action| over the 7 dims, action units (a bin is 0.0078)."""
    window_macro: int = param(10, "dyq: steps of the fineness window", 1, 1000)
    window_micro: int = param(5, "dyq: steps of the jerk window", 1, 1000)
    hysteresis: float = param(0.05, "dyq: score margin before lowering precision", 0.0, 1.0)
    min_dwell: int = param(3, "dyq: steps at a precision before lowering it", 0, 1000)
    warmup_steps: int = param(3, "dyq: full-precision steps at an episode's start", 0, 1000)
    gripper_window: int = param(3, "dyq: full-precision steps after a gripper change", 0, 1000)


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides how one action step is decoded."""

    mode: str = param(
        "hybrid", "decode mode: ar | spec | spec_relaxed | kerv | heisd | hybrid", choices=MODES
    )
    relaxed_threshold: int = param(
        9, "spec_relaxed: largest accepted |draft - verifier| in bins", 0, N_BINS - 1
    )
    """Largest accepted |draft - verifier| in bins for ``spec_relaxed``, and for ``kerv`` when its
    dynamic threshold is off (0 = exact)."""
    kerv: KervConfig = field(default_factory=KervConfig)
    heisd: HeisdConfig = field(default_factory=HeisdConfig)
    dyq: bool = param(False, "dyq: switch the model's precision step by step by its motion")
    """DyQ-VLA on top of the mode (``ar+dyq``, ``hybrid+dyq``, ...); needs ``dyq_precisions``."""
    precision: DyqConfig = field(default_factory=DyqConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)

    def problems(self) -> list[str]:
        """Reasons this configuration cannot be used; empty when it is valid."""
        out = problems(self, ENGINE_PARAMS)
        weights = self.heisd.sequence_weights
        if len(weights) != ACTION_DIMS or not all(0.0 <= w <= 100.0 for w in weights):
            out.append(
                f"heisd_sequence_weights must be {ACTION_DIMS} values in 0..100, "
                f"got {list(weights)}"
            )
        return out

    def validate(self) -> EngineConfig:
        """Return self, or raise ValueError listing every problem."""
        _raise_problems(self.problems())
        return self

    def with_mode(self, mode: str) -> EngineConfig:
        return replace(self, mode=mode).validate()


@dataclass(frozen=True)
class ControlConfig:
    """The control loop around the engine (the node's settings)."""

    control_rate_hz: float = param(10.0, "control loop rate (Hz)", 0.5, 100.0)
    stale_timeout_s: float = param(0.5, "inputs older than this give a zero twist (s)", 0.01, 10.0)
    stamp_tolerance_s: float = param(
        1.0,
        "input header stamps further than this from the node's clock give a zero twist "
        "(s; 0 = judge by arrival time only)",
        0.0,
        3600.0,
    )
    """Camera and joint_states header stamps must be within this of the node's clock (s):
    MoveIt Servo judges staleness by header stamp too. 0 = by arrival time only."""
    hold: bool = param(False, "true: stop commanding at once (zero twists), stay active")
    """True: zero twists at once and for as long as it stays set, without leaving active."""
    max_linear_speed: float = param(0.25, "linear speed limit (m/s)", 0.0, 2.0)
    """m/s, limit on the norm of the commanded linear velocity."""
    max_angular_speed: float = param(1.0, "angular speed limit (rad/s)", 0.0, 6.0)
    """rad/s, limit on the norm of the commanded angular velocity."""
    command_frame: str = param("panda_link0", "frame_id of the twist commands")
    instruction: str = param("", "task instruction (also topic ~/instruction)")
    joint_names: tuple[str, ...] = param(
        PANDA_ARM_JOINTS, "arm joints read from joint_states, in order"
    )

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def problems(self) -> list[str]:
        out = problems(self, CONTROL_PARAMS)
        if not self.command_frame.strip():
            out.append("command_frame is empty")
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            shown = list(self.joint_names[:8]) + (["..."] if len(self.joint_names) > 8 else [])
            out.append(f"joint_names must be distinct and not empty: {shown}")
        if len(self.instruction) > MAX_INSTRUCTION_CHARS:
            out.append(
                f"instruction of {len(self.instruction)} characters refused "
                f"(at most {MAX_INSTRUCTION_CHARS})"
            )
        return out

    def validate(self) -> ControlConfig:
        _raise_problems(self.problems())
        return self


DTYPES = ("", "float32", "bfloat16")
VERIFIER_PATHS = ("lean", "transformers")
"""How the language model runs: ``lean`` (plain PyTorch over the same modules, preallocated KV
cache; policy/lean.py) or ``transformers`` (the model's own forward over a DynamicCache)."""


@dataclass(frozen=True)
class ModelConfig:
    """What the node loads at configure; changing it needs a new configure."""

    model: str = param("default", "default | random | checkpoint directory", read_only=True)
    drafter_path: str = param(
        "", "drafter .safetensors ('' = drafter.safetensors beside the model)", read_only=True
    )
    datastore_path: str = param(
        "", "retrieval datastore ('' = datastore.safetensors beside the model)", read_only=True
    )
    """HeiSD's retrieval datastore ('' = datastore.safetensors beside the model, if any)."""
    unnorm_key: str = param(
        "", "dataset statistics to un-normalise with ('' = only)", read_only=True
    )
    trust_remote_code: bool = param(
        False,
        "allow a checkpoint's own Python code to run (only Prismatic variants the native "
        "OpenVLA loader does not know; published OpenVLA checkpoints never need it)",
        read_only=True,
    )
    """Let a checkpoint's own Python code run: only for Prismatic variants the native OpenVLA
    loader does not know. Published OpenVLA checkpoints never need it."""
    device: str = param("cpu", "torch device of the model (cpu, cuda, cuda:1)", read_only=True)
    dtype: str = param(
        "",
        "model dtype ('' = float32 on the CPU, bfloat16 on a GPU)",
        choices=DTYPES,
        read_only=True,
    )
    """Numeric type of the whole model and what follows it (drafter): float32 | bfloat16 |
    '' (float32 on the CPU, bfloat16 on a GPU)."""
    verifier: str = param(
        "lean",
        "how the language model runs: lean (plain PyTorch, preallocated KV cache) | "
        "transformers (the model's own forward)",
        choices=VERIFIER_PATHS,
        read_only=True,
    )
    """``lean`` gives the same tokens as ``transformers`` (logits within 1e-5 in float32) with
    fewer ops per forward; a language model it cannot run stays on ``transformers`` with a
    warning."""
    verifier_compile: bool = param(
        False,
        "torch.compile the lean verifier at configure (one graph per shape, warmed up there; "
        "never compiled inside a step)",
        read_only=True,
    )
    """Measured on the default model on a 2-core CPU, compiling does not pay (docs/benchmarks.md):
    the steps there are bound by reading the weights, not by per-op overhead. Off by default."""
    urdf: str = param("", "robot URDF ('' = the simulator's Panda)", read_only=True)
    """Robot description for the kinematics ('' = pybullet_data's Panda, the simulator's)."""
    ee_frame: str = param(PANDA_EE_FRAME, "end-effector frame of the URDF", read_only=True)
    torch_threads: int = param(
        1, "CPU threads for the model (0 = torch default)", 0, 256, read_only=True
    )
    """CPU threads for the model (0 = torch's default). One by default: measured on 2 cores, two
    OpenMP threads spinning against the executor's threads made the p99 step 12x longer."""
    dyq_precisions: str = param(
        "int8,int8_bf16,phased",
        "precision variants built at configure for dyq (comma list; '' = none)",
        read_only=True,
    )
    """Built beside the model's own weights: one int8 copy (+25 % of a float32 model's
    weights) serves ``int8`` and ``int8_bf16``; ``bfloat16`` adds its own copy (+50 %; none
    on a bfloat16 model) and ``int4_bf16`` its own (+16 %: half a byte a weight and a scale and
    offset per 32); ``phased`` reads the bfloat16 and int8 copies."""


ENGINE_PARAMS = params_table(EngineConfig)
"""The engine's ROS parameters (dynamic: ``ros2 param set`` applies them on the next step)."""
CONTROL_PARAMS = params_table(ControlConfig)
"""The control loop's ROS parameters (dynamic)."""
MODEL_PARAMS = params_table(ModelConfig)
"""What is loaded at configure (read-only parameters; a change needs a new configure)."""


def _get(config: object, path: tuple[str, ...]) -> object:
    for attr in path:
        config = getattr(config, attr)
    return config


def check(param: Param, value: object) -> str | None:
    """Why ``value`` is not acceptable for ``param``, or None."""
    if param.choices and value not in param.choices:
        shown = ", ".join(choice or "''" for choice in param.choices)
        return f"unknown {param.name} {value!r}; choose one of {shown}"
    if param.low is not None and not param.low <= value <= param.high:  # type: ignore[operator]
        return f"{param.name} {value} outside {param.low}..{param.high}"
    return None


def problems(config: object, params: tuple[Param, ...]) -> list[str]:
    return [p for param in params if (p := check(param, _get(config, param.path)))]


def _raise_problems(found: list[str]) -> None:
    if found:
        raise ValueError("; ".join(found))


def params_of(config: object, params: tuple[Param, ...]) -> dict[str, object]:
    """The flat parameter view of a configuration."""
    return {param.name: _get(config, param.path) for param in params}


def parse_params(pairs: list[str], params: tuple[Param, ...] = ENGINE_PARAMS) -> dict[str, object]:
    """``NAME=VALUE`` strings (the CLI's ``--param``) -> values typed like each default.

    Ranges are checked when the values are applied (:func:`config_from_params` then
    ``validate``), with the same reasons ``ros2 param set`` gets.
    """
    defaults = {p.name: _get(EngineConfig(), p.path) for p in params}
    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(
                f"--param {pair!r}: expected NAME=VALUE, NAME one of {', '.join(defaults)}"
            )
        kind = type(defaults[name])
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"--param {name} takes true or false, got {text!r}")
            values[name] = text.lower() == "true"
        else:
            try:
                values[name] = kind(text)
            except ValueError as err:
                raise ValueError(f"--param {name}: {text!r} is not a {kind.__name__}") from err
    return values


def config_from_params(config, params: tuple[Param, ...], values: dict[str, object]):
    """``config`` with the flat parameters ``values`` changed (not validated)."""
    by_name = {param.name: param for param in params}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(unknown)}")
    for name, value in values.items():
        config = _replace_path(config, by_name[name].path, value)
    return config


def _replace_path(config, path: tuple[str, ...], value):
    if len(path) == 1:
        return replace(config, **{path[0]: value})
    return replace(config, **{path[0]: _replace_path(getattr(config, path[0]), path[1:], value)})
