"""Stimuli of MoveSense and PongPredict: determinism, labels, timelines and the state contract."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from tasks import make_task
from tasks.pongpredict import PongPredict, simulate_flight
from tasks.stimulus import StimulusState

TASKS = ["movesense_lr", "movesense_rot", "pongpredict"]

# MOSS paper, appendix C (verbatim)
PAPER_INSTRUCTIONS = {
    "movesense_lr": "Point left when the circle on the display moves left, and point right when it moves right.",
    "movesense_rot": "Point right when the circle on the display moves clockwise, and point left when it moves "
                     "counterclockwise.",
    "pongpredict": "Point to the cup matching the color of the wall the ping pong ball will reach on the right.",
}


def load_cfg(name: str, small: bool = False):
    cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{name}.yaml")
    if small:  # geometry is in screen units: the same episode, rendered faster
        cfg.screen = {"width": 640, "height": 360}
    return cfg


def centroid_224(task, t: float) -> np.ndarray:
    """Centre of the bright object in the frame at t as the policy sees it (whole display -> 224x224)."""
    img = cv2.resize(task.render(t), (224, 224), interpolation=cv2.INTER_AREA)
    mask = img.min(axis=2) > 200  # the circle / ball is the only near-white thing
    ys, xs = np.nonzero(mask)
    assert len(xs) > 10, f"object not visible at t={t}"
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("name", TASKS)
def test_instruction_labels_and_meta(name):
    task = make_task(load_cfg(name), seed=0)
    assert task.instruction == PAPER_INSTRUCTIONS[name]
    assert task.name == name
    assert task.label_names == {"movesense_lr": ["left", "right"], "movesense_rot": ["cw", "ccw"],
                                "pongpredict": ["red", "green", "blue"]}[name]
    meta = task.meta()
    assert meta["label_names"] == task.label_names and meta["phase_names"] == task.phase_names
    assert len(meta["interactions"]) == len(task.interactions)
    w, h = task.screen_size
    assert task.render(0.5).shape == (h, w, 3) and task.render(0.5).dtype == np.uint8


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_episode_different_seed_differs(name):
    cfg = load_cfg(name)
    a, b, c = make_task(cfg, 7), make_task(cfg, 7), make_task(cfg, 8)
    assert a.interactions == b.interactions and a.duration == b.duration
    ts = np.linspace(0, a.duration, 13)
    buf = np.zeros_like(a.render(0.0))
    for t in ts:
        assert a.state(t) == b.state(t)
        assert np.array_equal(a.render(t), b.render(t))
        assert b.render(t, out=buf) is buf and np.array_equal(buf, a.render(t))  # reused buffer, same frame
    assert a.interactions != c.interactions
    assert any(not np.array_equal(a.render(t), c.render(t)) for t in ts)


@pytest.mark.parametrize("name", TASKS)
def test_timeline_and_state_contract(name):
    task = make_task(load_cfg(name), seed=3)
    its = task.interactions
    assert len(its) == (3 if name.startswith("movesense") else task.cfg["n_interactions"])
    if name == "pongpredict":
        assert len(its) >= 5  # paper: at least five interactions per episode
    prev_deadline = 0.0
    for k, it in enumerate(its):
        assert it.index == k and 0 <= it.label < len(task.label_names)
        assert prev_deadline <= it.start < it.onset < it.deadline <= task.duration
        prev_deadline = it.deadline
    for t in np.arange(-0.5, task.duration + 0.5, 0.05):
        s = task.state(t)
        it = next((i for i in its if i.onset <= t < i.deadline), None)
        if t < 0:
            assert task.phase_names[s.phase] == "idle"
        elif t >= task.duration:
            assert task.phase_names[s.phase] == "done"
        if it is None:
            assert (s.label, s.interaction, s.time_to_deadline) == (-1, -1, -1.0)
        else:
            assert (s.label, s.interaction) == (it.label, it.index)
            assert s.time_to_deadline == pytest.approx(it.deadline - t)
        moving = "moving" if name.startswith("movesense") else "flying"
        assert (task.phase_names[s.phase] == moving) == (it is not None and t < it.deadline and (
            name == "pongpredict" or t < task.patterns[it.index].motion_end))
        assert 0.0 <= s.xy[0] <= 1.0 and 0.0 <= s.xy[1] <= 1.0
    # "next interaction" on the display jumps to the start of the following segment
    assert task.next_start(0.0) == its[1].start and task.next_start(its[1].start) == its[2].start
    assert task.next_start(its[-1].start) == task.duration
    rec = task.state(its[0].onset + 0.1).as_record()
    assert set(rec) == {"stim_label", "stim_phase", "stim_xy", "stim_interaction", "stim_time_to_deadline"}
    assert rec["stim_xy"].dtype == np.float32 and rec["stim_xy"].shape == (2,)
    s = task.state(its[0].onset + 0.1)
    assert StimulusState.from_dict(s.to_dict()) == s


def test_state_xy_matches_rendered_object():
    for name in TASKS:
        task = make_task(load_cfg(name, small=True), seed=11)
        w, h = task.screen_size
        for t in np.linspace(0.1, task.duration - 0.1, 15):
            state = task.state(t)
            if task.phase_names[state.phase] == "hit":
                continue  # the white region outline would count as the ball (tested separately)
            ys, xs = np.nonzero(task.render(t).min(axis=2) > 200)
            x, y = state.xy
            assert abs(xs.mean() - x * w) < 1.0 and abs(ys.mean() - y * h) < 1.0, (name, t)


def test_movesense_lr_direction_in_rendered_frames_matches_label():
    cfg = load_cfg("movesense_lr", small=True)
    for seed in range(4):
        task = make_task(cfg, seed)
        for it, p in zip(task.interactions, task.patterns):
            ts = np.arange(it.onset + 0.05, p.motion_end, 0.1)  # 10 FPS, as the policy sees it
            pos = np.array([centroid_224(task, t) for t in ts])
            dx, dy = np.diff(pos, axis=0).T
            sign = 1 if task.label_names[it.label] == "right" else -1
            assert np.all(sign * dx > 3.0), f"seed {seed}: motion per 10 FPS frame must be clearly visible"
            assert np.all(np.abs(dy) < 0.5)
            # before the onset the circle does not move
            before = [centroid_224(task, t) for t in (it.start + 0.01, it.onset - 0.01)]
            np.testing.assert_allclose(before[0], before[1], atol=1e-6)


def test_movesense_rot_turning_direction_in_rendered_frames_matches_label():
    cfg = load_cfg("movesense_rot", small=True)
    for seed in range(4):
        task = make_task(cfg, seed)
        for it, p in zip(task.interactions, task.patterns):
            ts = np.arange(it.onset + 0.05, p.motion_end, 0.1)
            pos = np.array([centroid_224(task, t) for t in ts])
            d = np.diff(pos, axis=0)
            assert np.all(np.linalg.norm(d, axis=1) > 3.0)
            # y points down: a positive cross product of successive steps is clockwise on the screen
            turn = d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0]
            sign = 1 if task.label_names[it.label] == "cw" else -1
            assert np.all(sign * turn > 0), f"seed {seed} interaction {it.index}"


def analytic_hit(cfg, x0, y0, vx, vy):
    """Closed-form PongPredict outcome by unfolding the reflections (independent of tasks/pongpredict.py):
    (arrival time, y at arrival, number of bounces, region name)."""
    aspect = cfg.screen.width / cfg.screen.height
    r, wall = cfg.ball.radius, cfg.walls.thickness
    y_min, y_max = wall + r, 1 - wall - r
    x_hit = aspect - cfg.right_wall.thickness - r
    span = y_max - y_min
    t_arrive = (x_hit - x0) / vx
    u = (y0 - y_min) + vy * t_arrive  # straight line in the unfolded (mirrored) field
    m = u % (2 * span)
    y = y_min + (m if m <= span else 2 * span - m)
    bounces = abs(math.floor(u / span))
    n = len(cfg.right_wall.order)
    region = min(int((y - wall) / ((1 - 2 * wall) / n)), n - 1)
    return t_arrive, y, bounces, cfg.right_wall.order[region]


def unfolded_position(cfg, lc, s):
    r, wall = cfg.ball.radius, cfg.walls.thickness
    y_min, span = wall + r, 1 - 2 * (wall + r)
    m = ((lc.y0 - y_min) + lc.vy * s) % (2 * span)
    return lc.x0 + lc.vx * s, y_min + (m if m <= span else 2 * span - m)


@pytest.mark.parametrize("sampling", ["target_first", "free"])
def test_pongpredict_label_agrees_with_analytic_unfolding(sampling):
    cfg = load_cfg("pongpredict")
    cfg.launch.sampling = sampling
    if sampling == "free":
        cfg.launch.max_angle_deg = 65  # steeper: more bounces
    counts = np.zeros(3, int)
    n_bounced = 0
    plain = OmegaConf.to_container(cfg)
    for seed in range(120):
        task = make_task(plain, seed)
        assert isinstance(task, PongPredict)
        for lc, it in zip(task.launches, task.interactions):
            t_arrive, y_hit, bounces, region = analytic_hit(cfg, lc.x0, lc.y0, lc.vx, lc.vy)
            assert task.label_names[it.label] == region, f"seed {seed} interaction {it.index}"
            assert it.deadline - it.onset == pytest.approx(t_arrive, abs=1e-9)
            assert lc.hit_y == pytest.approx(y_hit, abs=1e-9)
            assert lc.bounces == bounces
            counts[it.label] += 1
            n_bounced += bounces > 0
            # the shown ball follows the same path at any time of the flight
            w, h = task.screen_size
            for s in np.linspace(0, t_arrive, 7)[:-1]:
                x, y = task.state(it.onset + s).xy
                ex, ey = unfolded_position(cfg, lc, s)
                assert (x * w / h, y) == pytest.approx((ex, ey), abs=1e-9)
    share = counts / counts.sum()
    assert np.all(share > (0.27 if sampling == "target_first" else 0.15)), share
    assert n_bounced > 0.3 * counts.sum()


def test_simulate_flight_reflects_at_walls():
    segments, t, y = simulate_flight(0.0, 0.5, 1.0, 3.0, 0.1, 0.9, x_hit=1.0)
    # y: 0.5 -> 0.9 (t=0.1333) -> 0.1 (t=0.4) -> 0.9 (t=0.6667) -> 0.1 (t=0.9333) -> 0.3 at x_hit (t=1)
    assert [round(sg.t, 4) for sg in segments] == [0.0, 0.1333, 0.4, 0.6667, 0.9333]
    assert t == pytest.approx(1.0) and y == pytest.approx(0.3)
    assert all(0.1 <= sg.y <= 0.9 for sg in segments)
    assert all(a.vy == -b.vy for a, b in itertools.pairwise(segments))


def test_pongpredict_hit_phase_outlines_region_and_ball_at_wall():
    cfg = load_cfg("pongpredict")
    task = make_task(cfg, 5)
    it = task.interactions[0]
    s = task.state(it.deadline + 0.1)
    assert task.phase_names[s.phase] == "hit" and s.label == -1
    w, h = task.screen_size
    assert s.xy[0] * w == pytest.approx(w - (cfg.right_wall.thickness + cfg.ball.radius) * h)
    diff = np.abs(task.render(it.deadline + 0.1).astype(int) - task.render(it.deadline - 0.01).astype(int))
    _, xs = np.nonzero(diff.max(axis=2) > 0)
    assert xs.max() == w - 1  # the region outline is drawn on the right wall


def test_labels_roughly_balanced_across_seeds():
    for name in ["movesense_lr", "movesense_rot"]:
        cfg = OmegaConf.to_container(load_cfg(name))
        labels = [it.label for seed in range(100) for it in make_task(cfg, seed).interactions]
        assert 0.4 < np.mean(labels) < 0.6


def test_config_errors_name_the_key():
    cfg = load_cfg("movesense_lr")
    cfg.speed = [3.0, 4.0]
    with pytest.raises(ValueError, match="speed"):
        make_task(cfg, 0)
    cfg = load_cfg("movesense_rot")
    cfg.label_names = ["ccw", "cw"]
    with pytest.raises(ValueError, match="label_names"):
        make_task(cfg, 0)
    cfg = load_cfg("pongpredict")
    cfg.kind = "tennis"
    with pytest.raises(ValueError, match="tennis"):
        make_task(cfg, 0)


def test_render_scales_with_screen_size():
    cfg = load_cfg("movesense_rot")
    small = make_task(cfg, 4)
    cfg.screen = {"width": 2560, "height": 1440}
    big = make_task(cfg, 4)
    assert big.render(1.0).shape == (1440, 2560, 3)
    # geometry is in screen units, so the episode is the same at any resolution
    assert big.interactions == small.interactions
    for t in np.linspace(0, small.duration, 11):
        assert big.state(t).xy == pytest.approx(small.state(t).xy, abs=1e-9)
