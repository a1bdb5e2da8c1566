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
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moss_vla.stss import check_window, stss, vectorise
from moss_vla.toy_clip import ToyClip, make_toy_clip


@dataclass(frozen=True)
class VizDefaults:
    """The single place for moss-viz defaults (command-line flags override them)."""

    frames: int = 8
    size: int = 40
    radius: float = 3.0
    speed: float = 1.5
    window: tuple[int, int, int] = (5, 9, 9)  # the VLA's (L, U, V)
    orders: int = 3
    query_object: str = "green cube (horizontal)"
    out: str = "outputs/moss_viz.png"


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = VizDefaults()
    p = argparse.ArgumentParser(prog="moss-viz", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out, help="PNG to write (default: %(default)s)")
    p.add_argument("--query-object", default=d.query_object, help="object whose centre is the query, in the "
                   "middle frame (default: %(default)s)")
    p.add_argument("--query", type=int, nargs=3, metavar=("T", "H", "W"), help="explicit query cell (overrides "
                   "--query-object)")
    p.add_argument("--window", type=int, nargs=3, metavar=("L", "U", "V"), default=d.window,
                   help="STSS window (default: %(default)s)")
    p.add_argument("--orders", type=int, default=d.orders, help="highest order shown (default: %(default)s)")
    p.add_argument("--frames", type=int, default=d.frames, help="clip length (default: %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="clip height = width in cells (default: %(default)s)")
    p.add_argument("--radius", type=float, default=d.radius, help="object radius in cells (default: %(default)s)")
    p.add_argument("--speed", type=float, default=d.speed, help="cells per frame (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        window = check_window(args.window)
        clip = make_toy_clip(args.frames, args.size, args.radius, args.speed)
        if args.query is not None:
            query = tuple(args.query)
        else:
            tq = args.frames // 2
            query = (tq, *clip.centre_cell(args.query_object, tq))
        maps = stss_maps(torch.from_numpy(clip.frames), query, window, args.orders)
    except ValueError as err:
        raise SystemExit(f"moss-viz: {err}") from None
    out = Path(args.out).resolve()
    render_figure(clip, maps, query, out, window)
    scores = object_scores(maps, clip, query[0])
    print(f"query (t, h, w) = {query}; mean map value per object in frame {query[0]}:")
    print(f"{'object':28s}" + "".join(f"  order {n}" for n in range(1, args.orders + 1)))
    for i, obj in enumerate(clip.objects):
        print(f"{obj.name:28s}" + "".join(f"  {scores[n, i]:7.2f}" for n in range(args.orders)))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
