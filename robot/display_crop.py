"""Display-region crop: the camera image -> the policy's view of the display only.

The same code path for every camera (ZED, UVC, replay, simulated): the four display corners,
marked once in the raw camera image and stored in the camera config, define a perspective warp
straight to the policy resolution (one `cv2.warpPerspective`, so crop and resize cost one pass).
`warpPerspective` interpolates bilinearly only, which aliases when the display region is several
times larger than the output (fine patterns turn into moiré, moving edges flicker). With
`antialias=True` the display's bounding box is first halved per axis (2x2 box averages, OpenCV's fast
path) until less than a 2x reduction is left for the warp; its cost against the plain warp is in
benchmarks/results/franky_tracking.json (crop_ms_per_frame, from benchmarks/franky_tracking_bench.py).
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
        # raw pixels per output pixel along x and y (longest edges). With antialias, each axis whose
        # scale is >= 2 is first halved (exact 2-pixel box average, OpenCV's fast INTER_AREA path)
        # as often as it stays >= 1 output pixel, so the bilinear warp only shrinks by less than 2x.
        side = np.linalg.norm(edges, axis=1)
        scale = (max(side[0], side[2]) / out_w, max(side[1], side[3]) / out_h)
        self.roi: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) averaged before the warp
        self.halvings = (0, 0)
        self.prescale = (1, 1)
        src = c
        if antialias and max(scale) >= 2.0:
            mx, my = (int(np.floor(np.log2(s))) if s >= 2.0 else 0 for s in scale)
            fx, fy = 2**mx, 2**my
            x0, y0 = np.maximum(np.floor(c.min(axis=0)).astype(int), 0)
            x1, y1 = np.ceil(c.max(axis=0)).astype(int)
            w_lim = self.raw_size[1] if self.raw_size is not None else x1
            h_lim = self.raw_size[0] if self.raw_size is not None else y1
            # grow the box to whole multiples of the averaging factors (shift it back inside the image)
            x1, y1 = x0 + -(-(x1 - x0) // fx) * fx, y0 + -(-(y1 - y0) // fy) * fy
            x0, x1 = (x0 - max(0, x1 - w_lim), min(x1, w_lim)) if x1 > w_lim else (x0, x1)
            y0, y1 = (y0 - max(0, y1 - h_lim), min(y1, h_lim)) if y1 > h_lim else (y0, y1)
            if x0 >= 0 and y0 >= 0 and (x1 - x0) % fx == 0 and (y1 - y0) % fy == 0:
                self.roi = (int(x0), int(y0), int(x1), int(y1))
                self.halvings, self.prescale = (mx, my), (fx, fy)
                src = (c - np.array([x0, y0], np.float32)) / np.array([fx, fy], np.float32)
        dst = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float32)
        self.matrix = cv2.getPerspectiveTransform(src.astype(np.float32), dst)
        # a full-frame crop at the output size (e.g. replayed 224x224 frames) must not resample
        self.is_identity = bool(self.roi is None and np.allclose(c, dst) and self.raw_size == self.out_size)

    @classmethod
    def full_frame(cls, raw_size: tuple[int, int], out_size: tuple[int, int] = (224, 224)) -> DisplayCrop:
        """No crop: the whole (raw_h, raw_w) image resized to out_size."""
        h, w = raw_size
        return cls([[0, 0], [w, 0], [w, h], [0, h]], out_size, raw_size)

    @classmethod
    def from_config(cls, crop_cfg) -> DisplayCrop:
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
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            image = image[y0:y1, x0:x1]
            mx, my = self.halvings
            while mx > 0 or my > 0:
                h, w = image.shape[:2]
                image = cv2.resize(image, (w // 2 if mx > 0 else w, h // 2 if my > 0 else h),
                                   interpolation=cv2.INTER_AREA)
                mx, my = mx - 1, my - 1
        return cv2.warpPerspective(image, self.matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)

    def to_config(self) -> dict:
        return {"corners": self.corners.tolist(), "out_size": list(self.out_size),
                "raw_size": None if self.raw_size is None else list(self.raw_size)}
