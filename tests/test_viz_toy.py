"""The toy clip of appendix A and the moss-viz command (1st-order sees look, 2nd-order sees motion)."""

import numpy as np
import pytest
import torch

from moss_vla.command import ConfigError
from moss_vla.config import compose_config
from moss_vla.toy_clip import make_toy_clip
from moss_vla.viz import main, object_scores, stss_maps


@pytest.fixture(scope="module")
def d():
    """The defaults of moss-viz (configs/viz.yaml)."""
    return compose_config([], "viz")


@pytest.fixture(scope="module")
def clip(d):
    return make_toy_clip(d.frames, d.size, d.radius, d.speed)


def test_toy_clip_layout(clip):
    T, N = clip.masks.shape[:2]
    assert clip.frames.shape == (8, 40, 40, 3) and clip.frames.dtype == np.float32 and N == 6
    for i, obj in enumerate(clip.objects):
        first = np.argwhere(clip.masks[0, i]).mean(0)
        last = np.argwhere(clip.masks[T - 1, i]).mean(0)
        dy, dx = last - first
        if obj.motion == "horizontal":
            assert dx > 8 and abs(dy) < 0.5, obj.name
        else:
            assert dy > 8 and abs(dx) < 0.5, obj.name
    # objects never overlap, and every object's cells carry its colour
    assert (clip.masks.sum(1) <= 1).all()
    green = clip.index("green cube (vertical)")
    assert np.allclose(clip.frames[3][clip.masks[3, green]], [0, 1, 0], atol=0.5)


def test_first_order_sees_look_second_order_sees_motion(clip, d):
    tq = d.frames // 2
    query = (tq, *clip.centre_cell(d.query_object, tq))
    maps = stss_maps(torch.from_numpy(clip.frames), query, tuple(d.window), orders=2)
    scores = object_scores(maps, clip, tq)
    idx = {o.name: i for i, o in enumerate(clip.objects)}
    other_cube = scores[:, idx["green cube (vertical)"]]
    same_motion = scores[:, [idx["blue circle (horizontal)"], idx["red heart (horizontal)"]]]
    # 1st order (appearance): the other green cube looks the same and scores high; other objects do not
    assert other_cube[0] > 0.9
    assert (same_motion[0] < 0.1).all()
    # 2nd order (motion): the objects moving like the query beat the look-alike that moves differently
    assert (same_motion[1] > other_cube[1] + 0.05).all(), scores


def test_moss_viz_writes_png(tmp_path, capsys):
    out = tmp_path / "figure" / "viz.png"
    written = main([f"out={out}", "window=[3,5,5]", "orders=3"])
    assert written == out.resolve() and out.exists()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert f"wrote {out.resolve()}" in printed and "green cube (vertical)" in printed


def test_moss_viz_rejects_bad_options(tmp_path):
    out = f"out={tmp_path / 'a.png'}"
    with pytest.raises(SystemExit, match="window: .*must be odd"):
        main([out, "window=[3,4,5]"])
    with pytest.raises(SystemExit, match=r"window must be \[L, U, V\]"):
        main([out, "window=[3,5]"])
    with pytest.raises(SystemExit, match="query_object: no object named"):
        main([out, "query_object='purple star'"])
    with pytest.raises(SystemExit, match="orders must be >= 1"):
        main([out, "orders=0"])
    with pytest.raises(ConfigError, match="frames='many' must be an integer"):  # checked with the config
        main([out, "frames=many"])
    with pytest.raises(SystemExit, match="query: .*outside the clip"):
        main([out, "query=[9,0,0]"])
    with pytest.raises(ConfigError, match="viz: .*nosuchkey"):
        main([out, "nosuchkey=1"])
    assert not (tmp_path / "a.png").exists()


def test_moss_viz_help_and_cfg_print_only(tmp_path, capsys):
    assert main(["-h"]) is None
    assert "moss-viz" in capsys.readouterr().out
    assert main([f"out={tmp_path / 'a.png'}", "--cfg"]) is None
    printed = capsys.readouterr().out
    assert "window:" in printed and f"out: {tmp_path / 'a.png'}" in printed
    assert not (tmp_path / "a.png").exists()
