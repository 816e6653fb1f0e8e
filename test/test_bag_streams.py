"""One bag reader on one alignment clock: training, the datastore and evaluation pair alike.

The bag here is written as ``kerv record`` writes a live arm: receive times from the
recorder's clock, header stamps from the sensors' clock 1000 s away, the gripper command
received just after the twist of its step, and a new instruction mid-run.
"""

import numpy as np
import pytest

from kerv_ros import bags, offline, retrieval, training
from kerv_ros.config import PANDA_ARM_JOINTS

PERIOD_NS = 100_000_000
SENSOR_CLOCK = 5_000 * 10**9
RECORDER_CLOCK = SENSOR_CLOCK + 1_000 * 10**9
DELAY_NS = 3_000_000  # sensor to recorder
STEPS = 12
SWITCH = 5  # the step at which the second instruction arrives


def _gripper(step: int) -> float:
    return float(step % 3 == 0)


@pytest.fixture(scope="module")
def live_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "run"
    names = [*PANDA_ARM_JOINTS, "panda_finger_joint1"]
    with bags.BagWriter(path) as bag:
        bag.write(
            bags.INSTRUCTION_TOPIC,
            bags.STRING,
            RECORDER_CLOCK - PERIOD_NS,
            bags.scalar_msg(bags.STRING, "first"),
        )
        for step in range(STEPS):
            stamp = SENSOR_CLOCK + step * PERIOD_NS
            received = RECORDER_CLOCK + step * PERIOD_NS + DELAY_NS
            if step == SWITCH:
                bag.write(
                    bags.INSTRUCTION_TOPIC,
                    bags.STRING,
                    received - 1_000_000,
                    bags.scalar_msg(bags.STRING, "second"),
                )
            rgb = np.full((16, 16, 3), step, dtype=np.uint8)
            bag.write(bags.IMAGE_TOPIC, bags.IMAGE, received, bags.image_msg(rgb, stamp))
            positions = [0.01 * step] * 7 + [0.02]
            bag.write(
                bags.JOINT_STATES_TOPIC,
                bags.JOINT_STATE,
                received,
                bags.joint_state_msg(names, positions, [0.0] * 8, stamp),
            )
            # The node's command for this step: stamped at its publish time, twist first.
            command_stamp = stamp + 40_000_000
            linear = [0.01 * (step + 1), 0.0, 0.0]
            twist = bags.twist_msg(linear, [0.0] * 3, command_stamp, "panda_link0")
            bag.write(bags.TWIST_TOPIC, bags.TWIST_STAMPED, received + 40_000_000, twist)
            bag.write(
                bags.GRIPPER_TOPIC,
                bags.FLOAT64,
                received + 40_500_000,
                bags.scalar_msg(bags.FLOAT64, _gripper(step)),
            )
    return path


def test_each_twist_takes_the_gripper_command_published_with_it(live_bag):
    streams = bags.read_streams(
        live_bag, {bags.TWIST_TOPIC: bags.TWIST_STAMPED, bags.GRIPPER_TOPIC: bags.FLOAT64}
    )
    commands = bags.command_stream(streams, PERIOD_NS / 1e9)
    assert [c.msg[6] for c in commands] == [_gripper(step) for step in range(STEPS)]
    assert [c.msg[0] for c in commands] == pytest.approx([0.001 * (s + 1) for s in range(STEPS)])


def test_unstamped_messages_are_placed_on_the_sensor_clock(live_bag):
    streams = bags.read_streams(live_bag, offline.REQUIRED, required=offline.REQUIRED)
    first, second = streams[bags.INSTRUCTION_TOPIC]
    # Each is shifted by the receive delay of the stamped message received before it (the
    # first one, before any, by the first stamped message's).
    assert first.t == SENSOR_CLOCK - PERIOD_NS - DELAY_NS
    assert second.t == SENSOR_CLOCK + SWITCH * PERIOD_NS - 1_000_000
    assert [m.t for m in streams[bags.IMAGE_TOPIC]] == [
        SENSOR_CLOCK + step * PERIOD_NS for step in range(STEPS)
    ]


def test_training_datastore_and_evaluation_pair_the_same_way(live_bag):
    demos = training.load_demonstrations([live_bag], 16, progress=False)
    (episode,) = retrieval.read_bag_episodes([live_bag], progress=False)
    ticks = offline.read_ticks(live_bag, 10.0, image_size=16)
    expected_instructions = ["first"] * SWITCH + ["second"] * (STEPS - SWITCH)
    assert demos.instructions == expected_instructions
    assert [o.instruction for o in ticks.observations] == expected_instructions
    assert list(demos.actions[:, 6]) == [_gripper(step) for step in range(STEPS)]
    np.testing.assert_array_equal(demos.actions, episode)
    np.testing.assert_array_equal(np.stack(ticks.commands), episode)
    # Each sample's image and joints are those of its own step, not the step before.
    assert [int(img[0, 0, 0]) for img in demos.images] == list(range(STEPS))
    np.testing.assert_allclose(demos.states[:, 0], 0.01 * np.arange(STEPS), rtol=1e-6)


def test_a_required_topic_absent_or_of_another_type_names_the_bag(live_bag):
    with pytest.raises(bags.BagError, match="bag lacks topic"):
        bags.read_streams(live_bag, {"/nothing": bags.STRING}, required=["/nothing"])
    with pytest.raises(bags.BagError, match="expected std_msgs/msg/Float64"):
        bags.read_streams(live_bag, {bags.IMAGE_TOPIC: bags.FLOAT64})
