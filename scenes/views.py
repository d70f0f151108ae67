"""Which views lie near which, and cameras made from nothing: each view's nearest neighbours (the
training step's source, the nearest-view baseline), evenly spread subsets, orbits.
"""

from __future__ import annotations

import numpy as np
import torch

from scenes.layouts import Scene


def view_neighbours(poses: torch.Tensor, k: int = 4) -> torch.Tensor:
    """(V, min(k, V - 1)) indices of each view's nearest views by viewing direction, nearest first,
    never the view itself: with 4 views or fewer, every other view."""
    dirs = poses[:, :3, 2]
    similarity = dirs @ dirs.T - 3 * torch.eye(len(poses))                  # push self to the end
    return similarity.topk(min(k, len(poses) - 1), dim=1).indices


def evenly_spaced(count: int, n: int) -> torch.Tensor:
    """(min(n, count),) indices of n of `count` views, evenly spaced, the first and the last
    included."""
    return torch.linspace(0, count - 1, min(n, count)).round().long()


def spread_views(scene: Scene, n: int) -> Scene:
    """n of the scene's views (all if it has fewer), evenly spaced in name order."""
    pick = evenly_spaced(len(scene.names), n)
    return Scene(scene.images[pick], scene.poses[pick], scene.intrinsics,
                 [scene.names[i] for i in pick])


def look_at(eye: np.ndarray, target: np.ndarray,
            up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-to-world pose (4, 4) at `eye` looking at `target`, world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down: any right vector will do
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def orbit_radius(poses: torch.Tensor, center: tuple[float, float, float]) -> float:
    """The cameras' (V, 4, 4) mean distance from the grid centre: where render.py's orbit and the
    viewer fly."""
    return (poses[:, :3, 3] - torch.tensor(center)).norm(dim=-1).mean().item()


def orbit_poses(center: tuple[float, float, float], radius: float, n: int,
                elevation: float = 20.0, azimuth0: float = 0.0) -> torch.Tensor:
    """(n, 4, 4) cameras evenly spaced on a circle at `elevation` degrees around `center`, world z
    up, the first at azimuth `azimuth0` degrees (from +x towards +y), all looking at the centre."""
    azimuth = np.radians(azimuth0) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.radians(elevation)
    eyes = np.stack([np.cos(el) * np.cos(azimuth), np.cos(el) * np.sin(azimuth),
                     np.full(n, np.sin(el))], 1)
    return torch.from_numpy(np.stack([look_at(np.asarray(center) + radius * e, np.asarray(center))
                                      for e in eyes])).float()
