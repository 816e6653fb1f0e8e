"""The simulated Panda: expert success, determinism, honest joint velocities, safe commands,
and demonstrations that read back as rosbag2 with rosbags and with the mcap library."""

import json

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader

from kerv_ros import bags
from kerv_ros.sim.closed_loop import run as run_closed_loop
from kerv_ros.sim.collect import collect, run_expert
from kerv_ros.sim.tasks import TASKS, layout_for, new_episode
from kerv_ros.sim.world import PandaWorld, SimConfig


@pytest.fixture(scope="module")
def world():
    w = PandaWorld(SimConfig(image_size=64))
    yield w
    w.close()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_succeeds(world, task):
    results = [run_expert(world, task, seed) for seed in range(4)]
    assert all(r.success for r in results), results
    assert all(r.steps <= TASKS[task].max_steps for r in results)


def trajectory(world, task, seed, steps=8):
    images, states = [], []

    def on_step(step, w, episode, command):
        if step < steps:
            images.append(w.render())
            states.append(w.joints().positions.copy())

    run_expert(world, task, seed, on_step)
    return np.array(images), np.array(states)


def test_same_seed_same_episode_bit_identical(world):
    a_images, a_states = trajectory(world, "pick", 5)
    b_images, b_states = trajectory(world, "pick", 5)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_states, b_states)


def test_different_seeds_different_layouts(world):
    layouts = {json.dumps(new_episode(world, "push", seed).layout.cubes) for seed in range(6)}
    assert len(layouts) == 6
    a, _ = trajectory(world, "reach", 1, steps=1)
    b, _ = trajectory(world, "reach", 2, steps=1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("task", ["reach", "pick"])
def test_hold_records_the_expert_at_its_goal_after_success(world, task):
    def run(hold):
        commands = []
        record = run_expert(world, task, 2, lambda s, w, e, c: commands.append(c), hold=hold)
        return record, commands

    plain, plain_commands = run(0)
    held, held_commands = run(5)
    assert plain.success and held.success
    assert held.steps == plain.steps + 5 and len(held_commands) == len(plain_commands) + 5
    # The expert settles on its goal: the extra commands shrink, no new motion starts.
    extra = np.array([c[0] for c in held_commands[plain.steps : plain.steps + 5]])
    speeds = np.linalg.norm(extra, axis=1)
    assert np.all(np.diff(speeds) <= 1e-6) and speeds[-1] < 0.05, speeds
    assert held_commands[-1] is None


def test_arranged_scene_renders_as_a_fresh_reset(world):
    """arrange() (for rendering still scenes fast) must show what reset() + the joints show."""
    q = np.array([0.3, -0.1, -0.2, -2.0, 0.1, 2.2, 0.5])
    first, second = layout_for("reach", 3), layout_for("pick", 4)
    world.reset(first)
    world.arrange(second, q)
    arranged = world.render()
    other = PandaWorld(SimConfig(image_size=64))
    try:
        other.reset(second)
        other.forward_kinematics(q)
        np.testing.assert_array_equal(arranged, other.render())
        np.testing.assert_allclose(world.ee_pose()[0], other.ee_pose()[0])
    finally:
        other.close()
    world.reset(first)
    assert not np.array_equal(arranged, world.render())


def test_joint_velocities_agree_with_finite_differences(world):
    pairs = []
    previous = {}

    def on_step(step, w, episode, command):
        q = w.joints()
        if "q" in previous:
            pairs.append((q.velocities[:7], (q.positions[:7] - previous["q"]) / w.config.period_s))
        previous["q"] = q.positions[:7].copy()

    run_expert(world, "pick", 11, on_step)
    velocity, differences = map(np.array, zip(*pairs, strict=True))
    assert np.abs(velocity).max() > 0.1  # the arm really moved
    np.testing.assert_allclose(velocity, differences, atol=0.05)


def test_commands_leaving_the_workspace_are_clamped(world):
    new_episode(world, "reach", 0)
    before = world.counters.clamped
    for _ in range(40):
        report = world.apply([0.0, 0.0, -5.0], [0.0, 0.0, 0.0], 1.0)  # down through the table
        assert report.clamped
    ee, _ = world.ee_pose()
    assert ee[2] >= world.config.workspace_low[2] - 0.01
    assert world.counters.clamped == before + 40
    q = world.joints().positions[:7]
    assert np.all(q >= world.lower - 1e-3) and np.all(q <= world.upper + 1e-3)


def test_joint_limits_hold_under_sustained_rotation(world):
    new_episode(world, "reach", 0)
    for _ in range(60):
        world.apply([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 1.0)  # keep turning the wrist
    q = world.joints().positions[:7]
    assert np.all(q >= world.lower - 1e-3) and np.all(q <= world.upper + 1e-3)
    assert world.counters.clamped > 0


def test_nan_commands_are_refused_and_counted(world):
    new_episode(world, "reach", 0)
    q_before = world.joints().positions.copy()
    report = world.apply([np.nan, 0.0, 0.0], [0.0, 0.0, 0.0], 1.0)
    assert report.refused
    assert world.counters.refused == 1
    assert world.apply([0.0, 0.0, 0.0], [np.inf, 0, 0], 1.0).refused
    assert world.apply([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], float("nan")).refused
    assert world.counters.refused == 3
    np.testing.assert_allclose(world.joints().positions[:7], q_before[:7], atol=2e-3)


def test_collected_bags_read_back(tmp_path):
    records = collect(["reach"], 2, 40, tmp_path, image_size=64, progress=False)
    assert [r.success for r in records] == [True, True]
    index = json.loads((tmp_path / "episodes.json").read_text())
    assert [e["seed"] for e in index] == [40, 41]
    bag = tmp_path / records[0].bag
    store = bags.typestore()
    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == {
            bags.IMAGE_TOPIC: bags.IMAGE,
            bags.JOINT_STATES_TOPIC: bags.JOINT_STATE,
            bags.INSTRUCTION_TOPIC: bags.STRING,
            bags.TWIST_TOPIC: bags.TWIST_STAMPED,
            bags.GRIPPER_TOPIC: bags.FLOAT64,
            bags.SUCCESS_TOPIC: bags.BOOL,
        }
        counts = {}
        for connection, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, connection.msgtype)
            counts[connection.topic] = counts.get(connection.topic, 0) + 1
            if connection.topic == bags.IMAGE_TOPIC:
                assert (msg.height, msg.width, msg.encoding) == (64, 64, "rgb8")
            if connection.topic == bags.JOINT_STATES_TOPIC:
                assert len(msg.velocity) == len(msg.position) == 9
            if connection.topic == bags.INSTRUCTION_TOPIC:
                assert msg.data == records[0].instruction
        assert counts[bags.IMAGE_TOPIC] == records[0].steps + 1
        assert counts[bags.TWIST_TOPIC] == records[0].steps
    (mcap_file,) = bag.glob("*.mcap")
    with open(mcap_file, "rb") as handle:
        reader = make_reader(handle)
        schemas = {channel.topic: schema.name for schema, channel, _ in reader.iter_messages()}
    assert schemas[bags.TWIST_TOPIC] == "geometry_msgs/msg/TwistStamped"
    assert schemas[bags.IMAGE_TOPIC] == "sensor_msgs/msg/Image"


def test_sim_node_runs_an_episode_across_processes(tmp_path):
    """sim_node in its own process, driven by its expert, reports a successful episode."""
    (run,) = run_closed_loop(
        ["reach"], 1, 7, "random", [], expert=True, log_dir=tmp_path, timeout_s=120
    )
    assert len(run.episodes) == 1
    assert run.episodes[0]["task"] == "reach"
    assert run.episodes[0]["success"] is True


def test_noise_injection_executes_noise_but_records_the_expert(world, monkeypatch):
    recorded, executed = [], []
    apply = world.apply

    def spy(linear, angular, gripper):
        executed.append(np.array(linear))
        return apply(linear, angular, gripper)

    monkeypatch.setattr(world, "apply", spy)
    run_expert(world, "push", 3, lambda s, w, e, c: c and recorded.append(c[0]), noise=0.05)
    difference = np.array(executed) - np.array(recorded)
    assert len(recorded) > 10
    assert 0.03 < difference.std() < 0.07 and abs(difference.mean()) < 0.02
    executed.clear()
    recorded.clear()
    run_expert(world, "push", 3, lambda s, w, e, c: c and recorded.append(c[0]))
    np.testing.assert_array_equal(np.array(executed), np.array(recorded))


def test_a_driver_moves_the_arm_while_the_expert_is_recorded(world, monkeypatch):
    executed, recorded = [], []
    apply = world.apply

    def spy(linear, angular, gripper):
        executed.append((np.array(linear), gripper))
        return apply(linear, angular, gripper)

    def lazy_driver(w, instruction):
        assert instruction == f"reach the {layout_for('reach', 2).target} cube"
        return np.zeros(3), np.zeros(3), 0.5

    monkeypatch.setattr(world, "apply", spy)
    record = run_expert(
        world, "reach", 2, lambda s, w, e, c: c and recorded.append(c), driver=lazy_driver
    )
    assert not record.success  # the driver never moved, whatever the expert asked
    assert record.steps == TASKS["reach"].max_steps
    assert all(np.all(lin == 0) and g == 0.5 for lin, g in executed)
    assert len(recorded) == len(executed)
    assert np.linalg.norm(recorded[0][0]) > 0.1  # the expert asks to move toward the cube

    executed.clear()
    record = run_expert(world, "reach", 2, driver=lazy_driver, beta=1.0)
    assert record.success  # beta 1: the expert's own commands are executed


def test_pick_expert_takes_over_a_grasp_it_did_not_make(world):
    """A driver brings the open gripper around the cube and closes it; the expert, which never
    reached its own waypoints, recognises the grasp and lifts instead of reopening."""
    from kerv_ros.sim.tasks import Expert

    episode = new_episode(world, "pick", 4)
    expert = Expert(world, episode)
    cube = world.cube_position(episode.layout.target)
    grasp = cube + np.array([0.013, 0.0, 0.0])  # beyond the expert's 8 mm waypoint tolerance
    for step in range(60):
        ee, _ = world.ee_pose()
        goal = grasp + np.array([0.0, 0.0, 0.12 if step < 25 else 0.0])
        closed = np.linalg.norm(ee - grasp) < 0.01
        expert.act()  # labels, as in a DAgger episode
        world.apply(np.clip(4.0 * (goal - ee), -0.25, 0.25), np.zeros(3), 0.0 if closed else 1.0)
        if closed and expert.phase >= 2:
            break
    assert expert.phase >= 2, "the expert did not see the grasp"
    for _ in range(25):
        linear, _, gripper = expert.act()
        world.apply(linear, np.zeros(3), gripper)
    assert world.cube_position(episode.layout.target)[2] > 0.08


def test_pick_expert_goes_straight_down_from_over_the_cube(world):
    """Brought over the cube below its approach point by someone else, the expert lowers the
    gripper instead of climbing back to the approach point first."""
    from kerv_ros.sim.tasks import Expert

    episode = new_episode(world, "pick", 6)
    expert = Expert(world, episode)
    cube = world.cube_position(episode.layout.target)
    above = cube + np.array([0.0, 0.0, 0.06])
    for _ in range(40):
        ee, _ = world.ee_pose()
        world.apply(np.clip(4.0 * (above - ee), -0.25, 0.25), np.zeros(3), 1.0)
    assert np.linalg.norm(world.ee_pose()[0] - above) < 0.005
    linear, _, gripper = expert.act()
    assert linear[2] < -0.05 and gripper == 1.0


def test_push_expert_pushes_from_behind_the_block_and_climbs_from_beside_it(world):
    """Left low behind the block by someone else, the expert pushes; left low beside it, it
    goes up and over instead of pushing the wrong way."""
    from kerv_ros.sim.tasks import Expert

    for offset, pushes in (
        (np.array([0.0, -0.07, 0.0]), True),
        (np.array([0.07, 0.0, 0.0]), False),
    ):
        episode = new_episode(world, "push", 5)
        expert = Expert(world, episode)
        cube = world.cube_position(episode.layout.target)
        spot = cube + offset
        via = spot + np.array([0.0, 0.0, 0.15])
        for goal in (via, spot):
            for _ in range(30):
                ee, _ = world.ee_pose()
                world.apply(np.clip(4.0 * (goal - ee), -0.25, 0.25), np.zeros(3), 0.0)
        assert np.linalg.norm(world.ee_pose()[0] - spot) < 0.008
        linear, _, _ = expert.act()
        if pushes:
            assert linear[1] > 0.1 and abs(linear[2]) < 0.05
        else:
            assert linear[2] > 0.1


def test_collect_refuses_a_beta_without_a_driver(tmp_path):
    from kerv_cli import run_kerv

    proc = run_kerv("sim", "collect", "--beta", "0.3", "-o", str(tmp_path / "bags"), timeout=120)
    assert proc.returncode == 2
    assert "give --driver too" in proc.stderr
    assert not (tmp_path / "bags").exists()
