"""One control tick's input, as every layer sees it: the core type below the backends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Observation:
    """One control tick's input.

    An RGB image (H x W x 3, uint8), the instruction, and the arm's joint positions
    (proprioception) for policies that read them. The joint velocities and the joint reading's
    stamp (seconds) feed KERV's kinematics; velocities may be None (absent or not finite in the
    message: the twist then comes from finite differences over the stamps).
    """

    image: np.ndarray
    instruction: str
    state: np.ndarray | None = None
    velocities: np.ndarray | None = None
    stamp: float | None = None

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H x W x 3 RGB, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype}")
        if min(image.shape[:2]) < 8:
            raise ValueError(f"image too small: {image.shape[:2]}")
        if not isinstance(self.instruction, str):
            raise ValueError(f"instruction must be a string, got {type(self.instruction)}")
        if self.state is not None:
            self.state = np.asarray(self.state, dtype=np.float32)
            if self.state.ndim != 1 or not np.all(np.isfinite(self.state)):
                raise ValueError(f"state must be a finite vector, got {self.state}")
        if self.velocities is not None:
            self.velocities = np.asarray(self.velocities, dtype=np.float64)
            if self.state is None or self.velocities.shape != self.state.shape:
                raise ValueError("velocities need joint positions (state) of the same length")
            if not np.all(np.isfinite(self.velocities)):
                self.velocities = None  # never used as numbers; the twist falls back, flagged
        self.image = image
