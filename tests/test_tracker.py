"""relay/tracker.py: hysteresis across detections (units), and what it buys on the real clips with the
shipped model (training/video_coverage.py through the real detector)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relay.settings import DEFAULT_WEIGHTS, Settings
from relay.tracker import BoxTracker

PLATE = [100.0, 100.0, 200.0, 140.0]


def det(box: list[float], score: float, cls: int = 0) -> np.ndarray:
    return np.array([[*box, score, cls]], np.float32)


def none() -> np.ndarray:
    return np.zeros((0, 6), np.float32)


def moved(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_a_weak_detection_alone_is_not_hidden() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    boxes, continued, held = tr.update(det(PLATE, 0.5), 0.0)
    assert len(boxes) == 0 and (continued, held) == (0, 0)
    assert len(tr) == 0


def test_a_found_object_stays_hidden_while_it_scores_above_track_conf() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    boxes, _, _ = tr.update(det(PLATE, 0.7), 0.0)
    assert len(boxes) == 1
    # the object moves and the detector is unsure of it for two seconds: still hidden, where it is now
    for k in range(1, 31):
        box = moved(PLATE, 3 * k)
        boxes, continued, held = tr.update(det(box, 0.35), k / 15)
        assert (continued, held) == (1, 0)
        np.testing.assert_allclose(boxes[0, :4], box)
    # below track_conf: the track is held where it was last seen for hold_s, then ends
    last = moved(PLATE, 90)
    boxes, continued, held = tr.update(det(moved(PLATE, 93), 0.2), 31 / 15)
    assert (continued, held) == (0, 1)
    np.testing.assert_allclose(boxes[0, :4], last)
    boxes, _, held = tr.update(none(), 30 / 15 + 0.4)
    assert held == 1
    boxes, _, held = tr.update(none(), 30 / 15 + 0.41)
    assert len(boxes) == 0 and held == 0 and len(tr) == 0


def test_a_missed_detection_is_held_then_released() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.6, hold_s=0.2)  # no hysteresis, only the hold
    tr.update(det(PLATE, 0.9), 0.0)
    boxes, continued, held = tr.update(none(), 0.1)
    assert (len(boxes), continued, held) == (1, 0, 1)
    assert len(tr.update(none(), 0.25)[0]) == 0


def test_weak_detections_continue_only_the_track_they_overlap() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(PLATE, 0.8), 0.0)
    elsewhere = [400.0, 300.0, 500.0, 340.0]
    both = np.concatenate([det(PLATE, 0.4), det(elsewhere, 0.5)])
    boxes, continued, held = tr.update(both, 1 / 15)
    assert (continued, held) == (1, 0)
    np.testing.assert_allclose(boxes[:, :4], [PLATE])


def test_class_is_ignored_when_continuing_a_track() -> None:
    """The detector sometimes calls a shipping label an ID card: the object stays hidden."""
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(PLATE, 0.8, cls=2), 0.0)
    boxes, continued, _ = tr.update(det(PLATE, 0.45, cls=1), 1 / 15)
    assert continued == 1 and len(boxes) == 1


def test_strong_detections_are_always_hidden_and_one_detection_continues_one_track() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    a, b = PLATE, moved(PLATE, 300)
    tr.update(np.concatenate([det(a, 0.9), det(b, 0.9)]), 0.0)
    assert len(tr) == 2
    # two detections on the first object: the best continues it, the other (strong) starts a track
    twins = np.concatenate([det(a, 0.95), det(moved(a, 5), 0.7)])
    boxes, _, held = tr.update(twins, 0.05)
    assert held == 1  # the second object was not seen: held
    assert len(boxes) == 3 and len(tr) == 3


def test_a_weak_whole_object_around_a_found_part_is_hidden() -> None:
    """The shipped model boxes a label's tracking number as a plate at 0.6+ and the whole label at
    ~0.3: the whole label is hidden (the found part lies inside it), on this frame and the next."""
    label = [100.0, 100.0, 460.0, 420.0]  # IoU with the block below is under match_iou
    block = [130.0, 110.0, 350.0, 230.0]
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    boxes, continued, _ = tr.update(np.concatenate([det(block, 0.7, 0), det(label, 0.35, 2)]), 0.0)
    assert continued == 1
    np.testing.assert_allclose(boxes[:, :4], [block, label])
    boxes, continued, held = tr.update(det(label, 0.32, 2), 1 / 15)  # the block dips under 0.3
    assert (continued, held) == (1, 0)
    np.testing.assert_allclose(boxes[:, :4], [label])
    # a weak box elsewhere that merely touches the label is not hidden
    boxes, _, _ = tr.update(
        np.concatenate([det(label, 0.4, 2), det([440.0, 400.0, 640.0, 480.0], 0.5)]), 2 / 15
    )
    np.testing.assert_allclose(boxes[:, :4], [label])


def test_five_column_detections_and_bad_shapes() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    boxes, _, _ = tr.update(np.array([[*PLATE, 0.9]], np.float32), 0.0)
    assert boxes.shape == (1, 6)
    with pytest.raises(ValueError):
        tr.update(np.zeros((3,), np.float32), 0.1)
    with pytest.raises(ValueError):
        BoxTracker(conf=0.5, track_conf=0.6, hold_s=0.4)
    with pytest.raises(ValueError):
        BoxTracker(conf=0.6, track_conf=0.3, hold_s=-1)


def test_reset_forgets_every_track() -> None:
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=10.0)
    tr.update(det(PLATE, 0.9), 0.0)
    tr.reset()
    assert len(tr.update(none(), 0.1)[0]) == 0


def test_the_tracker_only_ever_adds_to_the_serving_threshold() -> None:
    """Random detections: every box at/above conf is in the output, whatever the tracks are."""
    rng = np.random.default_rng(0)
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.3)
    for k in range(300):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 600, (n, 2))
        wh = rng.uniform(10, 120, (n, 2))
        dets = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (n, 1)), rng.integers(0, 3, (n, 1))], 1)
        boxes, _, _ = tr.update(dets.astype(np.float32), k / 15)
        strong = dets[dets[:, 4] >= 0.6].astype(np.float32)
        for s in strong:
            assert (np.abs(boxes - s).max(axis=1) < 1e-4).any()


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}")
def test_tracking_hides_more_of_the_real_clips_with_the_shipped_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real path: the shipped ONNX on every frame of the test clips, replayed through the
    tracker with the server's defaults, against the single threshold (the model card's command)."""
    from training.video_coverage import main as coverage_main

    s = Settings()
    assert coverage_main(["--threads", "2", "--cover", "0.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["conf"], res["track_conf"], res["hold_s"]) == (s.conf_threshold, s.track_conf, s.track_hold_s)
    for name, r in res["clips"].items():
        th, tr = r["threshold"], r["tracked"]
        assert r["frames"] == 150, name
        # never less hidden than the threshold alone, on every measure
        assert tr["hidden"] >= th["hidden"] and tr["mean_coverage"] >= th["mean_coverage"], (name, r)
        assert tr["frames_with_raw_object"] <= th["frames_with_raw_object"], (name, r)
        la = r["lookahead"]  # and lookahead (the relay's policy) never less than tracking alone
        assert la["hidden"] >= tr["hidden"] and la["mean_coverage"] >= tr["mean_coverage"], (name, r)
        assert la["frames_with_raw_object"] <= tr["frames_with_raw_object"], (name, r)
    parcel = res["clips"]["parcel_labels"]
    # the label scores around 0.6 (weights/MODEL_CARD.md): found once, it stays hidden
    assert parcel["tracked"]["hidden"] >= 0.95 > parcel["threshold"]["hidden"] + 0.2, parcel
    # ... and the frames before it is found wait for the detection of the next one
    assert parcel["lookahead"]["hidden"] >= 0.95, parcel


def test_a_part_found_inside_a_track_does_not_end_it() -> None:
    """A text line found inside a tracked card continues it (weak parts stay hidden) but does not
    show where the rest of the card went: the card's box stays held where it was last seen whole,
    for ``hold_s`` after the last part seen inside it; a detection covering the card replaces it at
    once."""
    card = [100.0, 100.0, 460.0, 420.0]
    line = [110.0, 110.0, 450.0, 140.0]
    photo = [120.0, 200.0, 220.0, 330.0]
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(card, 0.9, 1), 0.0)
    boxes, _, held = tr.update(det(line, 0.9, 1), 0.2)
    assert held == 1
    np.testing.assert_allclose(boxes[:, :4], [line, card])
    boxes, _, held = tr.update(det(line, 0.35, 1), 0.4)  # a weak part still continues the card
    assert held == 1 and len(boxes) == 2
    # the card was last seen whole 1.2 s ago, but parts of it keep being seen inside it: still held
    for t in (0.6, 0.8, 1.0, 1.2):
        boxes, _, held = tr.update(det(photo if t == 1.0 else line, 0.4, 2), t)
        assert held >= 1 and any(np.allclose(b[:4], card) for b in boxes), t
    boxes, _, held = tr.update(none(), 1.59)  # within hold_s of the last part: still held
    assert any(np.allclose(b[:4], card) for b in boxes)
    boxes, _, held = tr.update(none(), 1.61)  # then it ends
    assert len(boxes) == 0
    tr.update(det(card, 0.9, 1), 1.7)
    tr.update(det(line, 0.9, 1), 1.8)
    boxes, _, held = tr.update(det(line, 0.9, 1), 2.3)  # the line alone, not inside anything
    np.testing.assert_allclose(boxes[:, :4], [line])
    tr.update(det(card, 0.9, 1), 3.0)
    boxes, _, held = tr.update(det(moved(card, 10), 0.9, 1), 3.1)  # the card itself, moved
    assert held == 0
    np.testing.assert_allclose(boxes[:, :4], [moved(card, 10)])


def test_a_large_part_overlapping_a_track_by_iou_does_not_replace_it() -> None:
    """A text band across the lower half of a card overlaps the card's box by IoU ~0.4 (above
    ``match_iou``) but lies inside it and is less than ``contain`` of its area: a part, not the card
    moved; the card stays held (the ID clip's frame 89 leaked through relay.offline this way). The
    same object found again at its own size still replaces its track (tracks do not pile up)."""
    card = [100.0, 100.0, 460.0, 420.0]
    band = [110.0, 280.0, 450.0, 410.0]
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(card, 0.35, 1), 0.0, start_conf=0.3)  # a weak card found while a scene settles
    boxes, _, held = tr.update(det(band, 0.98, 3), 0.1)
    assert held == 1
    np.testing.assert_allclose(boxes[:, :4], [band, card])
    for t in (0.2, 0.3, 0.4):  # the card found again, a little smaller each time: one track
        boxes, _, held = tr.update(det([card[0] + 5 * t, card[1], card[2], card[3]], 0.9, 1), t)
    assert len(boxes) == 1 and held == 0


def test_a_late_part_keeps_a_track_held() -> None:
    """A side detector's late part (relay/sidecar.py: :meth:`BoxTracker.add`) found inside a live
    track keeps it held as a part in :meth:`BoxTracker.update` does."""
    card = [100.0, 100.0, 460.0, 420.0]
    line = [110.0, 110.0, 450.0, 140.0]
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(card, 0.9, 1), 0.0)
    tr.update(none(), 0.3)
    tr.add(det(line, 0.98, 3), 0.3, 0.35)  # the net's run on the frame of 0.3 s comes in late
    boxes, _, held = tr.update(none(), 0.65)  # 0.65 s after the card was seen whole: still held
    assert any(np.allclose(b[:4], card) for b in boxes) and held >= 1
    boxes, _, _ = tr.update(none(), 0.75)  # hold_s after its last part: gone
    assert len(boxes) == 0


def test_a_late_part_brings_back_a_track_alive_at_its_frame() -> None:
    """The side net's run takes longer than ``hold_s`` to come back: the card it found a part of,
    alive on the frame the net ran on, ended meanwhile; the late part brings it back (the live ID
    clip's frame 89 leaked this way: the card's box had lapsed 34 ms before the net's lines came)."""
    card = [100.0, 100.0, 460.0, 420.0]
    line = [110.0, 110.0, 450.0, 140.0]
    tr = BoxTracker(conf=0.6, track_conf=0.3, hold_s=0.4)
    tr.update(det(card, 0.9, 1), 0.0)
    boxes, _, _ = tr.update(none(), 0.45)  # the card has ended
    assert len(boxes) == 0 and len(tr) == 0
    added = tr.add(det(line, 0.98, 3), 0.3, 0.5)  # the net's lines of the frame of 0.3 s
    assert any(np.allclose(b[:4], card) for b in added)
    boxes, _, held = tr.update(none(), 0.65)
    assert any(np.allclose(b[:4], card) for b in boxes) and held == 2
    assert len(tr.add(det(line, 0.98, 3), 0.75, 0.8)) == 1  # captured after the card ended: the line only
