"""``moss-viz``: 1st- to 3rd-order STSS maps of a query on the paper's toy clip (appendix A, fig. 3 and 8).

The features are the clip's pixels (RGB vectors on a black background), so nothing needs weights. As in
the appendix, the STSS encoding g is vectorisation over (L, U, V):

    M(0) = F,   M(n) = vec(S(n)) = vec(f(M(n - 1)))      (B, T, H, W, L*U*V)

and the n-th order map of the query q is ``map_n[t, h, w] = cos(M(n-1)[q], M(n-1)[t, h, w])``. The STSS
tensors S(n) themselves use the local (L, U, V) window, but the map compares the query against *every*
position of the clip rather than only its local window, as the paper's figure does (otherwise objects
farther away than the window could not light up at all). Row 1 of the figure is the RGB frames, rows
2-4 the maps of orders 1-3 (colour scale 0..1).

An object's score in a map is the mean of the map over the object's cells in the query frame.

    moss-viz                                              # defaults: configs/viz.yaml
    moss-viz out=outputs/moss_viz.png window=[3,5,5] orders=2
    moss-viz "query_object='red heart (horizontal)'"      # the query is that object's centre
    moss-viz query=[4,20,20]                              # an explicit query cell [T, H, W]
    moss-viz --cfg                                        # print the composed config

Keys (configs/viz.yaml): out, query_object, query, window, orders, frames, size, radius, speed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moss_vla.command import command
from moss_vla.config import cli_config, plain
from moss_vla.stss import check_window, stss, vectorise
from moss_vla.toy_clip import ToyClip, make_toy_clip


def stss_maps(features: Tensor, query: tuple[int, int, int], window: tuple[int, int, int], orders: int = 3) -> Tensor:
    """Maps of orders 1..orders of the query (t, h, w): (orders, T, H, W); features: (T, H, W, C)."""
    t, h, w = query
    T, H, W, _ = features.shape
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    if not (0 <= t < T and 0 <= h < H and 0 <= w < W):
        raise ValueError(f"query (t, h, w) = {query} is outside the clip of shape (T, H, W) = {(T, H, W)}")
    m = features[None]  # M(0) = F: (1, T, H, W, C)
    maps = []
    for n in range(1, orders + 1):
        mq = m[0, t, h, w]  # (C,)
        maps.append(torch.nn.functional.cosine_similarity(m[0], mq.expand_as(m[0]), dim=-1))  # (T, H, W)
        if n < orders:
            m = vectorise(stss(m, window))  # M(n) = vec(S(n)): (1, T, H, W, L*U*V)
    return torch.stack(maps)


def object_scores(maps: Tensor, clip: ToyClip, t: int) -> np.ndarray:
    """(orders, objects): mean of each map over each object's cells in frame t."""
    masks = torch.from_numpy(clip.masks[t])  # (N, H, W)
    return np.array([[float(m[t][mask].mean()) for mask in masks] for m in maps])


def render_figure(clip: ToyClip, maps: Tensor, query: tuple[int, int, int], path: Path, window) -> None:
    """RGB frames on the first row, one row per order below; the query is marked by a brown square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    orders, T = maps.shape[0], maps.shape[1]
    fig, axes = plt.subplots(orders + 1, T, figsize=(1.6 * T, 1.7 * (orders + 1)), squeeze=False)
    tq, hq, wq = query
    image = None
    for t in range(T):
        rows = [clip.frames[t]] + [maps[n, t].numpy() for n in range(orders)]
        for r, content in enumerate(rows):
            ax = axes[r, t]
            if r == 0:
                ax.imshow(content, interpolation="nearest")
            else:
                image = ax.imshow(content, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
            if t == tq:
                ax.add_patch(Rectangle((wq - 0.5, hq - 0.5), 1, 1, fill=False, edgecolor="saddlebrown", lw=2))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}" + (" (query)" if t == tq else ""), fontsize=8)
            if t == 0:
                ax.set_ylabel("RGB" if r == 0 else f"order {r}", fontsize=9)
    fig.suptitle(f"STSS maps of the query (t, h, w) = {query}, window (L, U, V) = {tuple(window)}", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, pad=0.02, label="cosine similarity (map rows)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError
    return int(value)


def _number(cfg: Any, key: str, kind: type) -> Any:
    """cfg[key] as an int or a float, else a SystemExit naming the key."""
    value = cfg[key]
    try:
        if kind is int:
            return _int(value)
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise SystemExit(f"moss-viz: {key} must be {'an int' if kind is int else 'a number'}, got {value!r}") from None


def _ints(cfg: Any, key: str, names: str) -> tuple[int, ...]:
    """cfg[key] as a list of len(names) ints, else a SystemExit naming the key."""
    value = cfg[key]
    try:
        if isinstance(value, (str, bytes)) or len(value) != len(names.split(", ")):
            raise ValueError
        return tuple(_int(v) for v in value)
    except (TypeError, ValueError):
        raise SystemExit(f"moss-viz: {key} must be [{names}] (ints), got {plain(value)!r}") from None


def main(argv: Sequence[str] | None = None) -> Path | None:
    """`moss-viz`: render the figure of configs/viz.yaml with hydra overrides; the written PNG, or None
    after `-h/--help` or `--cfg`."""
    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "viz", __doc__)
    if cfg is None:
        return None
    frames, size, orders = (_number(cfg, k, int) for k in ("frames", "size", "orders"))
    radius, speed = (_number(cfg, k, float) for k in ("radius", "speed"))
    try:
        window = check_window(_ints(cfg, "window", "L, U, V"))
    except ValueError as err:
        raise SystemExit(f"moss-viz: window: {err}") from None
    query_cell = None if cfg.query is None else _ints(cfg, "query", "T, H, W")
    if cfg.out is None or not str(cfg.out):
        raise SystemExit("moss-viz: out must be the PNG to write, got an empty value")
    for key, value in (("frames", frames), ("size", size), ("orders", orders)):
        if value < 1:
            raise SystemExit(f"moss-viz: {key} must be >= 1, got {value}")
    if radius <= 0:
        raise SystemExit(f"moss-viz: radius must be > 0, got {radius}")
    try:
        clip = make_toy_clip(frames, size, radius, speed)
    except ValueError as err:
        raise SystemExit(f"moss-viz: frames/size/radius/speed: {err}") from None
    if query_cell is not None:
        query = query_cell
    else:
        tq = frames // 2
        try:
            query = (tq, *clip.centre_cell(str(cfg.query_object), tq))
        except ValueError as err:
            raise SystemExit(f"moss-viz: query_object: {err}") from None
    try:
        maps = stss_maps(torch.from_numpy(clip.frames), query, window, orders)
    except ValueError as err:
        raise SystemExit(f"moss-viz: query: {err}") from None
    out = Path(str(cfg.out)).resolve()
    render_figure(clip, maps, query, out, window)
    scores = object_scores(maps, clip, query[0])
    print(f"query (t, h, w) = {query}; mean map value per object in frame {query[0]}:")
    print(f"{'object':28s}" + "".join(f"  order {n}" for n in range(1, orders + 1)))
    for i, obj in enumerate(clip.objects):
        print(f"{obj.name:28s}" + "".join(f"  {scores[n, i]:7.2f}" for n in range(orders)))
    print(f"wrote {out}")
    return out


@command("moss-viz")
def cli(argv: Sequence[str] | None = None) -> int:
    """The `moss-viz` entry point: exit status 0 once the figure is written (or the help / config printed)."""
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
