"""Shapes-world spec v1: rendering, captions, parsing, scoring."""

import numpy as np
import pytest

from vlv import world


@pytest.fixture(scope="module")
def scenes():
    return world.sample_scenes(seed=123, n=10_000, size=32)


def test_render_caption_parse_is_identity_on_10000_scenes(scenes):
    for scene in scenes:
        assert world.parse(scene.caption()) == scene.attributes


def test_objects_never_overlap_and_colours_are_the_specs(scenes):
    for scene in scenes[:1500]:
        objs = scene.attributes.objects
        masks = [world.object_mask(o, j, scene.size) for o, j in zip(objs, scene.jitter)]
        if len(masks) == 2:
            assert not np.any(masks[0] & masks[1])
        img = scene.render()
        allowed = {world.BACKGROUNDS[scene.attributes.background]} | {world.COLOURS[o.colour] for o in objs}
        assert {tuple(int(c) for c in px) for px in img.reshape(-1, 3)} == allowed  # every object visible
        for o, m in zip(objs, masks):
            assert (img[m] == world.COLOURS[o.colour]).all()


def test_distribution_follows_the_spec(scenes):
    counts = np.array([len(s.attributes.objects) for s in scenes])
    assert 0.47 < (counts == 1).mean() < 0.53
    bgs = [s.attributes.background for s in scenes]
    for bg in world.BACKGROUNDS:
        assert 0.30 < bgs.count(bg) / len(bgs) < 0.37
    jit = np.array([j for s in scenes for j in s.jitter])
    assert np.abs(jit).max() <= 0.03 * 32 + 1e-9
    assert np.abs(jit).max() > 0.029 * 32  # jitter spans the allowed range


def test_geometry_matches_the_spec():
    s = 60
    big = world.Obj("square", "red", "large", "center")
    m = world.object_mask(big, (0.0, 0.0), s)
    assert m.sum() == 18 * 18  # side 0.3*S = 18 px, centred at S/2
    assert m[30, 30] and not m[30, 40]
    disk = world.object_mask(world.Obj("circle", "red", "small", "top left"), (0.0, 0.0), s)
    ys, xs = np.nonzero(disk)
    assert xs.mean() == pytest.approx(s / 6 - 0.5, abs=0.01) and ys.mean() == pytest.approx(s / 6 - 0.5, abs=0.01)
    tri = world.object_mask(world.Obj("triangle", "red", "large", "bottom right"), (0.0, 0.0), s)
    rows = tri.sum(axis=1)
    filled = rows[rows > 0]
    assert filled[0] < filled[-1]  # apex up: narrow at the top, wide at the base
    assert len(filled) in (17, 18)  # height = size (the apex row may hold no pixel centre)
    assert abs(tri.sum() - 18 * 18 / 2) <= 18  # area = base * height / 2


def test_same_seed_same_scene_and_caption_example():
    a, b = world.scene_at(7, 3), world.scene_at(7, 3)
    assert a == b and np.array_equal(a.render(), b.render())
    attrs = world.Attributes(
        (world.Obj("circle", "red", "small", "top left"), world.Obj("square", "blue", "large", "center")), "black"
    )
    assert world.caption(attrs) == (
        "a small red circle at the top left and a large blue square at the center on a black background"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a small red circle at the top left",  # no background
        "a tiny red circle at the top left on a black background",  # unknown size
        "a small red circle at the center and a large blue square at the top left on a black background",  # order
        "a small red circle at the center and a large blue square at the center on a black background",  # same cell
        "a small red circle at the top and a small red circle at the left and a small red circle at the center on a black background",
    ],
)
def test_malformed_captions_are_rejected(bad):
    with pytest.raises(world.CaptionError):
        world.parse(bad)
    assert world.try_parse(bad) is None


def test_parse_normalises_case_space_and_full_stop():
    assert world.parse("  A small red circle at the  top left on a black background.") == world.parse(
        "a small red circle at the top left on a black background"
    )


def test_score_per_field():
    ref = [
        "a small red circle at the top left and a large blue square at the center on a black background",
        "a large green triangle at the bottom on a white background",
    ]
    assert world.score(ref, ref)["mean"] == 1.0 and world.score(ref, ref)["exact"] == 1.0
    pred = [
        "a small red square at the top left on a black background",  # shape wrong, 2nd object missing
        "gibberish",
    ]
    s = world.score(pred, ref)
    assert s["shape"] == 0 / 3
    assert s["colour"] == s["size"] == s["position"] == 1 / 3
    assert s["background"] == 1 / 2 and s["count"] == 0 / 2
    assert s["exact"] == 0 and s["parsed"] == 0.5
    assert s["mean"] == pytest.approx((0 + 1 / 3 * 3 + 0.5 + 0) / 6)


# ------------------------------------------------------------------ the analytic reader
from rasterisers import antialiased_render, pil_render  # noqa: E402


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("draw", [world.render, antialiased_render, pil_render], ids=["spec", "antialiased", "pil"])
def test_reader_reads_every_field_of_renders(draw, size):
    scenes = world.sample_scenes(11, 300 if size == 32 else 120, size)
    scores = world.agreement_scores([world.read_image(draw(sc)) for sc in scenes], [sc.attributes for sc in scenes])
    floor = 0.99 if draw is world.render else 0.95  # other rasterisers: their own edge rules at 6 px objects
    assert scores["mean"] >= 0.99, scores
    assert min(scores[f] for f in world.READ_FIELDS) >= floor, scores


def test_reader_tells_apart_what_differs():
    scene = world.scene_at(3, 0)
    truth = scene.attributes
    obj = truth.objects[0]
    other = {"shape": next(s for s in world.SHAPES if s != obj.shape),
             "colour": next(c for c in world.COLOURS if c != obj.colour),
             "size": next(s for s in world.SIZES if s != obj.size)}
    for field, value in other.items():
        changed = world.Attributes((world.Obj(**{**obj.__dict__, field: value}), *truth.objects[1:]), truth.background)
        read = world.read_image(world.render(world.Scene(changed, scene.jitter, scene.size)))
        got = world.agreement(read, truth)
        assert got[field] < 1.0 and all(got[f] == 1.0 for f in world.READ_FIELDS if f != field), (field, got)


def test_reader_on_blank_and_noise():
    blank = np.full((32, 32, 3), 128, np.uint8)
    assert world.read_image(blank) == world.Attributes((), "gray")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    world.read_image(noise)  # reads something, never raises


def test_agreement_counts_missing_and_extra_objects():
    a = world.Obj("circle", "red", "small", "top left")
    b = world.Obj("square", "blue", "large", "center")
    truth = world.Attributes((a, b), "black")
    one = world.agreement(world.Attributes((b,), "black"), truth)
    assert one["count"] == 0 and one["colour"] == 0.5 and one["position"] == 0.5 and one["background"] == 1
    swapped = world.agreement(world.Attributes((b, a), "white"), truth)  # order does not matter, background does
    assert swapped["colour"] == 1 and swapped["background"] == 0
    assert world.agreement(truth, truth)["mean"] == 1.0
