"""Mark the display corners in a camera image once; store them in the camera config's `crop` block.

    moss-calibrate crop camera=zed                    # grab a frame from the configured camera
    moss-calibrate crop camera=uvc image=f.png        # work on a saved frame
    moss-calibrate crop camera=zed 'corners=[[250,110],[1060,165],[1045,600],[265,640]]'   # no GUI
    moss-calibrate crop camera=uvc config=my_uvc.yaml preview=view.png save_frame=raw.png
    moss-calibrate crop --cfg camera=uvc              # print the composed config

Keys (configs/calibrate_crop.yaml): camera (the group option), config (the YAML updated; default
configs/camera/<camera>.yaml), image, corners, preview, save_frame.

The GUI (a pygame window: opencv-python-headless has no HighGUI) shows the frame; click the four
display corners in any order, `u` undoes, `r` restarts, Enter accepts (a preview of the 224x224
policy view is shown next to it), Esc cancels. Everything except the window loop is plain
functions (ordering, validation, YAML update) that are tested on their own.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from robot.display_crop import DisplayCrop

log = logging.getLogger(__name__)


# --- geometry ------------------------------------------------------------------------------------------
def order_corners(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Four (x, y) points in any order -> (4, 2) float32 ordered top-left, top-right, bottom-right,
    bottom-left (image coordinates, y down)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (4, 2):
        raise ValueError(f"crop calibration: need exactly 4 corner points (x, y), got shape {p.shape}")
    centre = p.mean(axis=0)
    # angle around the centre increases clockwise on screen (y down): TL, TR, BR, BL for a convex quad
    angles = np.arctan2(p[:, 1] - centre[1], p[:, 0] - centre[0])
    p = p[np.argsort(angles)]
    start = int(np.argmin(p.sum(axis=1)))  # top-left: smallest x + y
    return np.roll(p, -start, axis=0).astype(np.float32)


def validate_corners(corners: np.ndarray, raw_size: tuple[int, int], min_area_fraction: float = 0.01) -> None:
    """Raise ValueError if the ordered corners are not a usable display region of a (h, w) image."""
    DisplayCrop(corners, raw_size=raw_size)  # shape, inside the image, convex in TL, TR, BR, BL order
    x, y = corners[:, 0], corners[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    h, w = raw_size
    if area < min_area_fraction * h * w:
        raise ValueError(f"crop calibration: the marked region covers only {area / (h * w):.1%} of the image; "
                         f"click the four corners of the display")


# --- config file ---------------------------------------------------------------------------------------
def _flow(value: list) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()


def save_crop_to_config(path: str | Path, corners: np.ndarray, raw_size: tuple[int, int]) -> None:
    """Write `crop.corners` and `crop.raw_size` into a camera config YAML, keeping its comments and the
    other keys: the two lines are replaced in place (added if missing). Verified by reading back."""
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines()
    corners_list = [[round(float(x), 1), round(float(y), 1)] for x, y in np.asarray(corners)]
    new = {"corners": corners_list, "raw_size": [int(raw_size[0]), int(raw_size[1])]}
    try:
        start = next(i for i, ln in enumerate(lines) if re.match(r"^crop:\s*(#.*)?$", ln))
    except StopIteration:
        lines += ["crop:", f"  corners: {_flow(new['corners'])}", f"  raw_size: {_flow(new['raw_size'])}",
                  "  out_size: [224, 224]"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                    and not lines[i].lstrip().startswith("#")), len(lines))
        for key, value in new.items():
            pattern = re.compile(rf"^(\s+){key}:\s*([^#]*?)(\s*#.*)?$")
            for i in range(start + 1, end):
                m = pattern.match(lines[i])
                if m:
                    lines[i] = f"{m.group(1)}{key}: {_flow(value)}{m.group(3) or ''}"
                    break
            else:
                lines.insert(start + 1, f"  {key}: {_flow(value)}")
                end += 1
    out = "\n".join(lines) + "\n"
    doc = yaml.safe_load(out)
    if doc.get("crop", {}).get("corners") != new["corners"] or doc["crop"].get("raw_size") != new["raw_size"]:
        raise RuntimeError(f"crop calibration: could not update {path} in place (unusual layout of its "
                           f"crop block); set crop.corners: {new['corners']} by hand")
    path.write_text(out)


def load_crop_from_config(path: str | Path) -> DisplayCrop:
    """The DisplayCrop stored in a camera config YAML."""
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or "crop" not in doc:
        raise ValueError(f"{path}: no crop block")
    return DisplayCrop.from_config(doc["crop"])


# --- interactive picker ----------------------------------------------------------------------------------
class CornerPicker:
    """State of the corner-marking tool (independent of the window): clicks in raw image pixels."""

    def __init__(self, image: np.ndarray, out_size: tuple[int, int] = (224, 224)) -> None:
        self.image = image
        self.raw_size = (int(image.shape[0]), int(image.shape[1]))
        self.out_size = out_size
        self.points: list[tuple[float, float]] = []

    def click(self, x: float, y: float) -> None:
        if len(self.points) < 4:
            self.points.append((float(np.clip(x, 0, self.raw_size[1])), float(np.clip(y, 0, self.raw_size[0]))))

    def undo(self) -> None:
        if self.points:
            self.points.pop()

    def reset(self) -> None:
        self.points.clear()

    @property
    def complete(self) -> bool:
        return len(self.points) == 4

    def corners(self) -> np.ndarray:
        """Ordered, validated corners (raises ValueError with the reason if they are not usable)."""
        c = order_corners(self.points)
        validate_corners(c, self.raw_size)
        return c

    def annotated(self) -> np.ndarray:
        """The image with the clicked points (and the quadrilateral once complete) drawn on it."""
        img = self.image.copy()
        thickness = max(1, self.raw_size[1] // 640)
        for x, y in self.points:
            cv2.circle(img, (round(x), round(y)), 6 * thickness, (255, 0, 0), thickness)
        if self.complete:
            try:
                quad = self.corners().round().astype(np.int32)
                cv2.polylines(img, [quad], True, (0, 255, 0), thickness)
            except ValueError:
                pass
        return img

    def preview(self) -> np.ndarray:
        """The policy's view (out_size) through the marked crop."""
        return DisplayCrop(self.corners(), self.out_size, self.raw_size)(self.image)


def pick_corners_gui(image: np.ndarray, out_size: tuple[int, int] = (224, 224),
                     max_window: tuple[int, int] = (1280, 800)) -> np.ndarray | None:
    """Show `image` in a pygame window and let the user click the 4 display corners.
    Returns the ordered corners, or None if cancelled (Esc / window closed)."""
    import pygame

    picker = CornerPicker(image, out_size)
    h, w = picker.raw_size
    scale = min(1.0, max_window[0] / w, max_window[1] / h)
    view_w, view_h = round(w * scale), round(h * scale)
    pygame.display.init()  # not pygame.init(): the audio mixer's SDL thread is not needed here
    screen = pygame.display.set_mode((view_w + out_size[1], max(view_h, out_size[0])))
    pygame.display.set_caption("moss-vla crop: click the 4 display corners; u undo, r reset, Enter accept, Esc cancel")
    message = ""
    try:
        while True:
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT:
                    return None
                if ev.type == pygame.MOUSEBUTTONDOWN and ev.button == 1 and ev.pos[0] < view_w:
                    picker.click(ev.pos[0] / scale, ev.pos[1] / scale)
                elif ev.type == pygame.KEYDOWN:
                    if ev.key == pygame.K_ESCAPE:
                        return None
                    if ev.key == pygame.K_u:
                        picker.undo()
                    elif ev.key == pygame.K_r:
                        picker.reset()
                    elif ev.key in (pygame.K_RETURN, pygame.K_KP_ENTER) and picker.complete:
                        try:
                            return picker.corners()
                        except ValueError as e:
                            message = str(e)
                            log.warning("%s", message)
            shown = cv2.resize(picker.annotated(), (view_w, view_h), interpolation=cv2.INTER_AREA)
            screen.fill((0, 0, 0))
            screen.blit(pygame.image.frombuffer(np.ascontiguousarray(shown).tobytes(), (view_w, view_h), "RGB"),
                        (0, 0))
            if picker.complete:
                try:
                    prev = np.ascontiguousarray(picker.preview())
                    screen.blit(pygame.image.frombuffer(prev.tobytes(), (out_size[1], out_size[0]), "RGB"),
                                (view_w, 0))
                except ValueError as e:
                    message = str(e)
            pygame.display.flip()
            pygame.time.wait(15)
    finally:
        pygame.display.quit()
        if message:
            log.info("last message: %s", message)


# --- command line ----------------------------------------------------------------------------------------
def _grab_frame(camera_cfg: dict) -> np.ndarray:
    from robot.cameras.factory import make_camera

    if camera_cfg.get("type") in ("sim", "replay"):
        raise SystemExit(f"camera={camera_cfg.get('type')}: its crop is known (sim) or the identity (replay); "
                         f"use image=FRAME.png to calibrate on a saved frame")
    cam = make_camera(camera_cfg)
    try:
        return cam.read(timeout=5.0).image
    finally:
        cam.close()


def _corner_points(value: object) -> list[tuple[float, float]]:
    """The `corners` value: four [x, y] pairs, else a SystemExit naming it."""
    try:
        if isinstance(value, (str, bytes)) or len(value) != 4:
            raise ValueError
        points = []
        for pair in value:
            if isinstance(pair, (str, bytes)) or len(pair) != 2 or any(isinstance(v, bool) for v in pair):
                raise ValueError
            points.append((float(pair[0]), float(pair[1])))
        return points
    except (TypeError, ValueError):
        raise SystemExit(f"moss-calibrate crop: corners must be four [x, y] pairs, e.g. "
                         f"'corners=[[250,110],[1060,165],[1045,600],[265,640]]', got {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`moss-calibrate crop`: mark the display corners and store them in the camera config
    (configs/calibrate_crop.yaml with hydra overrides)."""
    from moss_vla.config import cli_config, plain
    from moss_vla.paths import CONFIG_DIR

    cfg = cli_config(list(sys.argv[1:] if argv is None else argv), "calibrate_crop", __doc__)
    if cfg is None:
        return 0
    name = str(cfg.camera_name)
    config = Path(str(cfg.config)) if cfg.config is not None else CONFIG_DIR / "camera" / f"{name}.yaml"
    if not config.is_file():
        raise SystemExit(f"moss-calibrate crop: config: camera config {config} does not exist")
    # the camera grabbed from: the config file given, else the composed camera group (with its overrides)
    camera_cfg = plain(cfg.camera) if cfg.config is None else yaml.safe_load(config.read_text())
    if not isinstance(camera_cfg, dict):
        raise SystemExit(f"moss-calibrate crop: config: {config} is not a camera config (a YAML mapping)")
    out_size = tuple((camera_cfg.get("crop") or {}).get("out_size") or (224, 224))
    points = None if cfg.corners is None else _corner_points(plain(cfg.corners))

    if cfg.image is not None:
        bgr = cv2.imread(str(cfg.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"moss-calibrate crop: image: cannot read image {cfg.image}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        image = _grab_frame(camera_cfg)
    if cfg.save_frame is not None:
        cv2.imwrite(str(cfg.save_frame), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    raw_size = (int(image.shape[0]), int(image.shape[1]))

    if points is not None:
        try:
            corners = order_corners(points)
            validate_corners(corners, raw_size)
        except ValueError as e:
            raise SystemExit(f"moss-calibrate crop: corners {points}: {e}") from None
    else:
        corners = pick_corners_gui(image, out_size)
        if corners is None:
            print("cancelled: nothing saved")
            return 1
    save_crop_to_config(config, corners, raw_size)
    print(f"saved crop.corners {np.round(corners, 1).tolist()} (raw {raw_size[1]}x{raw_size[0]}) to {config}")
    if cfg.preview is not None:
        view = DisplayCrop(corners, out_size, raw_size)(image)
        cv2.imwrite(str(cfg.preview), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
        print(f"wrote the policy view to {cfg.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
