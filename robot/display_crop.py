"""Display-region crop: the camera image -> the policy's view of the display only.

The same code path for every camera (ZED, UVC, replay, simulated): the four display corners,
marked once in the raw camera image and stored in the camera config, define a perspective warp
straight to the policy resolution (one `cv2.warpPerspective`, so crop and resize cost one pass).
`warpPerspective` interpolates bilinearly only, which aliases when the display region is several
times larger than the output (a moving edge would flicker); then the warp goes to an integer
multiple of the output size and `cv2.resize(INTER_AREA)` averages down (`antialias=True`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


class DisplayCrop:
    """Warp the quadrilateral `corners` (top-left, top-right, bottom-right, bottom-left; raw pixel
    (x, y)) of a (raw_h, raw_w) camera image to an (out_h, out_w) RGB image."""

    def __init__(
        self,
        corners: Sequence[Sequence[float]],
        out_size: tuple[int, int] = (224, 224),
        raw_size: tuple[int, int] | None = None,
        antialias: bool = True,
    ) -> None:
        c = np.asarray(corners, dtype=np.float32)
        if c.shape != (4, 2):
            raise ValueError(
                f"display crop: expected 4 corners as [[x, y], ...] (top-left, top-right, bottom-right, "
                f"bottom-left), got an array of shape {c.shape}; set camera.crop.corners in the camera config "
                f"(`moss-calibrate crop camera=...` marks them)"
            )
        if raw_size is not None:
            h, w = raw_size
            if (c[:, 0] < -1).any() or (c[:, 0] > w + 1).any() or (c[:, 1] < -1).any() or (c[:, 1] > h + 1).any():
                raise ValueError(f"display crop: corners {c.tolist()} lie outside the {w}x{h} camera image")
        edges = np.roll(c, -1, axis=0) - c
        turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
        if not (turns > 0).all():  # y points down: TL -> TR -> BR -> BL turns clockwise on screen
            raise ValueError(
                f"display crop: corners {c.tolist()} are not a convex quadrilateral in the order top-left, "
                f"top-right, bottom-right, bottom-left; re-mark them (`moss-calibrate crop`)"
            )
        self.corners = c
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.raw_size = None if raw_size is None else (int(raw_size[0]), int(raw_size[1]))
        out_h, out_w = self.out_size
        # raw pixels per output pixel along x and y (longest edge); above 1.5 we area-average
        side = np.linalg.norm(edges, axis=1)
        scale = (max(side[0], side[2]) / out_w, max(side[1], side[3]) / out_h)
        self.supersample = tuple(int(np.ceil(s)) if antialias and s > 1.5 else 1 for s in scale)  # (kx, ky)
        kx, ky = self.supersample
        dst = np.array([[0, 0], [out_w * kx, 0], [out_w * kx, out_h * ky], [0, out_h * ky]], dtype=np.float32)
        self.matrix = cv2.getPerspectiveTransform(c, dst)
        # a full-frame crop at the output size (e.g. replayed 224x224 frames) must not resample
        self.is_identity = bool(self.supersample == (1, 1) and np.allclose(c, dst) and self.raw_size == self.out_size)

    @classmethod
    def full_frame(cls, raw_size: tuple[int, int], out_size: tuple[int, int] = (224, 224)) -> "DisplayCrop":
        """No crop: the whole (raw_h, raw_w) image resized to out_size."""
        h, w = raw_size
        return cls([[0, 0], [w, 0], [w, h], [0, h]], out_size, raw_size)

    @classmethod
    def from_config(cls, crop_cfg) -> "DisplayCrop":
        """From a camera config's `crop` block: {corners: [[x, y] x4] | null, raw_size: [h, w], out_size}.

        `corners: null` means no crop (the whole raw image, resized)."""
        raw_size = crop_cfg.get("raw_size")
        out_size = tuple(crop_cfg.get("out_size") or (224, 224))
        corners = crop_cfg.get("corners")
        if raw_size is not None:
            raw_size = (int(raw_size[0]), int(raw_size[1]))
        if corners is None:
            if raw_size is None:
                raise ValueError("display crop: camera.crop needs raw_size [h, w] when corners is null")
            return cls.full_frame(raw_size, out_size)
        return cls([[float(x), float(y)] for x, y in corners], out_size, raw_size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"display crop: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        if self.raw_size is not None and image.shape[:2] != tuple(self.raw_size):
            raise ValueError(
                f"display crop: calibrated for a {self.raw_size[1]}x{self.raw_size[0]} camera image, "
                f"got {image.shape[1]}x{image.shape[0]}; re-run the crop calibration for this camera mode"
            )
        if self.is_identity:
            return image
        out_h, out_w = self.out_size
        kx, ky = self.supersample
        warped = cv2.warpPerspective(image, self.matrix, (out_w * kx, out_h * ky), flags=cv2.INTER_LINEAR)
        if (kx, ky) == (1, 1):
            return warped
        return cv2.resize(warped, (out_w, out_h), interpolation=cv2.INTER_AREA)

    def to_config(self) -> dict:
        return {"corners": self.corners.tolist(), "out_size": list(self.out_size),
                "raw_size": None if self.raw_size is None else list(self.raw_size)}
