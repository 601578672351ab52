"""relay/regions.py's text policies, pure: which of the net's text blocks are hidden."""

from __future__ import annotations

import numpy as np
import pytest

from relay.model import ClassId
from relay.regions import (
    POLICIES,
    RegionParams,
    combine,
    confirm_weak,
    evidence_blocks,
    label_confirmed,
    lines_to_read,
    net_regions,
    overlap_share,
    text_blocks,
)

SHAPE = (720, 1280, 3)
NO_CODES = np.zeros((0, 4), np.float32)
NO_2D = np.zeros(0, bool)


def _line(x1: float, y1: float, x2: float, y2: float, score: float = 0.8) -> list[float]:
    return [x1, y1, x2, y2, score, min(x2 - x1, y2 - y1)]


def _cand(x1: float, y1: float, x2: float, y2: float, score: float, cls: int = 0) -> list[float]:
    return [x1, y1, x2, y2, score, cls]


PLATE_TEXT = np.array([_line(500, 400, 620, 430)], np.float32)  # one line, 4:1
SIGN_TEXT = np.array([_line(100, 100, 400, 140), _line(100, 150, 380, 190)], np.float32)


def test_overlap_share_is_over_the_smaller_box() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 105, 100], [20, 20, 30, 30], [0, 0, 2, 2]], np.float32)
    np.testing.assert_allclose(overlap_share(a, b), [[0.5, 0.0, 1.0]])


def test_evidence_keeps_text_where_yolo_sees_something_at_a_low_score() -> None:
    p = RegionParams(policy="evidence", evidence_score=0.1)
    cands = np.array([_cand(495, 395, 625, 435, 0.12), _cand(90, 90, 410, 200, 0.05, 1)], np.float32)
    out = net_regions(np.concatenate([PLATE_TEXT, SIGN_TEXT]), NO_CODES, NO_2D, SHAPE, p, cands)
    assert len(out) == 1 and out[0, 5] == ClassId.TEXT  # the plate's line; the sign's candidate is too weak
    assert out[0, 0] < 500 and out[0, 2] > 620  # the block, grown
    # every policy but "evidence" ignores the candidates
    assert len(net_regions(SIGN_TEXT, NO_CODES, NO_2D, SHAPE, RegionParams(policy="all"), cands)) == 1


def test_evidence_without_candidates_hides_only_barcode_labels_and_text_on_them() -> None:
    p = RegionParams(policy="evidence")
    codes = np.array([[110, 200, 390, 240]], np.float32)  # a barcode under the sign's two lines
    out = net_regions(np.concatenate([PLATE_TEXT, SIGN_TEXT]), codes, np.array([False]), SHAPE, p)
    classes = sorted(out[:, 5].tolist())
    assert classes == [ClassId.TEXT, ClassId.BARCODE]  # the text touching the label, and the label
    assert len(net_regions(PLATE_TEXT, NO_CODES, NO_2D, SHAPE, p, None)) == 0


def test_evidence_needs_overlap_not_just_contact() -> None:
    p = RegionParams(policy="evidence", evidence_score=0.1, evidence_overlap=0.3)
    blocks = np.array([[0, 0, 100, 20, 0.9, 1, 20]], np.float32)
    grazing = np.array([_cand(95, 0, 300, 200, 0.9)], np.float32)  # 5 % of the block
    inside = np.array([_cand(10, 2, 50, 18, 0.3)], np.float32)  # a small candidate wholly inside
    assert len(evidence_blocks(blocks, NO_CODES, grazing, p)) == 0
    assert len(evidence_blocks(blocks, NO_CODES, inside, p)) == 1
    assert len(evidence_blocks(blocks, NO_CODES, np.zeros((0, 6), np.float32), p)) == 0


def test_unknown_policy_is_refused() -> None:
    assert "evidence" in POLICIES
    with pytest.raises(ValueError, match="policy"):
        RegionParams(policy="some")


def test_weak_yolo_boxes_need_text_unless_too_small_for_the_net_to_read() -> None:
    p = RegionParams(confirm_overlap=0.3, confirm_px=40)
    dets = np.array(
        [
            _cand(100, 100, 300, 200, 0.9),  # strong: kept whatever
            _cand(500, 100, 700, 200, 0.4),  # weak, no text: dropped
            _cand(480, 390, 640, 440, 0.4),  # weak, on the plate's text: kept
            _cand(900, 600, 940, 620, 0.4),  # weak, 20 px high = 10 net px at scale 0.5: kept
        ],
        np.float32,
    )
    text = net_regions(PLATE_TEXT, NO_CODES, NO_2D, SHAPE, RegionParams(policy="all"))
    kept = confirm_weak(dets, text, 0.6, 0.5, p)
    assert kept[:, 0].tolist() == [100, 480, 900]
    assert len(confirm_weak(dets, text, 0.0, 0.5, p)) == 4  # conf 0: every box is strong
    assert len(confirm_weak(dets[:0], text, 0.6, 0.5, p)) == 0


def test_combine_hands_the_tracker_confirmed_yolo_and_evidenced_text() -> None:
    p = RegionParams(policy="evidence", evidence_score=0.05)
    dets = np.array(
        [
            _cand(495, 395, 625, 435, 0.07),  # under the floor: evidence only, never a box itself
            _cand(90, 90, 410, 200, 0.45, 1),  # weak, on the sign's text: kept, and evidence for it
            _cand(800, 500, 1000, 650, 0.35),  # weak, no text: dropped
        ],
        np.float32,
    )
    lines = np.concatenate([PLATE_TEXT, SIGN_TEXT])
    out = combine(dets, lines, NO_CODES, NO_2D, SHAPE, p, conf=0.6, floor=0.3, net_scale=0.5)
    yolo = out[out[:, 5] < ClassId.TEXT]
    assert yolo[:, 4].tolist() == pytest.approx([0.45])
    assert (out[:, 5] == ClassId.TEXT).sum() == 2  # the plate's line and the sign's block
    out = combine(dets[1:], lines, NO_CODES, NO_2D, SHAPE, p, conf=0.6, floor=0.3, net_scale=0.5)
    assert (out[:, 5] == ClassId.TEXT).sum() == 1  # without its candidate the plate's line is not hidden


class _Yolo:
    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return np.array([_cand(0, 0, 10, 10, 0.9), _cand(20, 20, 30, 30, 0.4)], np.float32)


class _Net:
    def __init__(self) -> None:
        self.prior: list[np.ndarray] = []

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        raise AssertionError("a refining detector is asked to refine, not to detect")

    def refine(self, img_bgr: np.ndarray, prior: np.ndarray) -> np.ndarray:
        self.prior.append(prior)
        return np.concatenate([prior[:1], np.array([_cand(40, 40, 60, 50, 0.9, ClassId.TEXT)], np.float32)])


def test_a_refining_detector_replaces_the_boxes_before_it_on_its_steps() -> None:
    from relay.detection import DetectorSet, DetectorSpec

    net = _Net()
    dset = DetectorSet([DetectorSpec("yolo", _Yolo()), DetectorSpec("net", net, stride=2, refines=True)])
    img = np.zeros((64, 64, 3), np.uint8)
    on = dset.run(img, 0)
    assert on.ran == ("yolo", "net") and on.boxes[:, 4].tolist() == pytest.approx([0.9, 0.9])
    assert len(net.prior) == 1 and len(net.prior[0]) == 2  # it saw the YOLO boxes of the same image
    off = dset.run(img, 1)  # not the net's step: the YOLO boxes as they are
    assert off.ran == ("yolo",) and len(off.boxes) == 2
    assert len(dset.run(img, 2, skip=frozenset({"net"})).boxes) == 2  # switched off for a stream


def test_a_barcode_is_a_label_only_with_print_around_it() -> None:
    p = RegionParams(policy="all", label_lines=2)
    code = np.array([[110, 200, 390, 240]], np.float32)
    label = np.array([[68, 32, 432, 408]], np.float32)
    assert label_confirmed(code, label, SIGN_TEXT, SHAPE, p).tolist() == [True]
    assert label_confirmed(code, label, SIGN_TEXT[:1], SHAPE, p).tolist() == [False]  # one line only
    bars = np.array([_line(110, 200, 390, 240), _line(110, 242, 390, 262)], np.float32)
    assert label_confirmed(code, label, bars, SHAPE, p).tolist() == [False]  # the bars read as "text"
    # a fence, a blind, a shutter: a "code" without print around is not hidden at all
    assert len(net_regions(NO_CODES[:0], code, np.array([False]), SHAPE, p)) == 0
    out = net_regions(SIGN_TEXT, code, np.array([False]), SHAPE, p)
    assert sorted(out[:, 5].tolist()) == [ClassId.TEXT, ClassId.BARCODE]


def test_numbers_hides_print_with_digits_or_too_small_to_read() -> None:
    p = RegionParams(policy="numbers", read_px=16, min_digits=1, spread_gap=0)  # spreading: below
    small = np.array([_line(700, 600, 760, 612)], np.float32)  # 12 px: hidden unread
    lines = np.concatenate([PLATE_TEXT, SIGN_TEXT, small])  # plate 30 px, sign lines 40 px
    todo = lines_to_read(lines, SHAPE, p)
    assert todo.tolist() == [True, True, True, False]
    reads = np.array([4, 0, 0, -1], np.int16)  # the plate reads 4 digits, the sign none
    out = net_regions(lines, NO_CODES, NO_2D, SHAPE, p, None, reads)
    assert len(out) == 2 and (out[:, 5] == ClassId.TEXT).all()
    assert sorted(out[:, 0].tolist())[0] < 500 and out[:, 1].max() > 590  # the plate and the small print
    # a line not read (over the cap, no reader) counts as private: fail closed
    assert len(net_regions(lines, NO_CODES, NO_2D, SHAPE, p, None, np.array([4, 0, -1, -1]))) == 3
    assert len(net_regions(lines, NO_CODES, NO_2D, SHAPE, p, None, None)) == 3
    # a sign touching a barcode's label is hidden, digits or not
    code = np.array([[110, 200, 390, 240]], np.float32)
    out = net_regions(lines, code, np.array([False]), SHAPE, p, None, reads)
    assert (out[:, 5] == ClassId.TEXT).sum() == 3
    # one digit line makes the whole block private; a tall block with a small line is not read at all
    mixed = np.array([_line(100, 300, 400, 340), _line(100, 345, 300, 357)], np.float32)
    assert lines_to_read(mixed, SHAPE, p).tolist() == [False, False]
    blocks = text_blocks(SIGN_TEXT, SHAPE, p, np.array([0, 2], np.int16))
    assert len(blocks) == 1 and blocks[0, 7] == 1


def test_private_print_makes_the_print_beside_it_private() -> None:
    """A card's title (no digits) a few line heights from its number is on the same document."""
    p = RegionParams(policy="numbers", read_px=16, spread_gap=3.0)  # (served: 6)
    title = _line(100, 100, 400, 130)  # 30 px lines
    number = _line(100, 200, 300, 230)  # 70 px below the title (gap 2.3 lines after growing): near
    far_title = _line(800, 100, 1100, 130)  # 400 px to the right: another document, or a sign
    lines = np.array([title, number, far_title], np.float32)
    blocks = text_blocks(lines, SHAPE, p, np.array([0, 5, 0], np.int16))
    assert len(blocks) == 3
    assert sorted(blocks[:, 7].tolist()) == [0, 1, 1]
    assert blocks[blocks[:, 0] > 700, 7].tolist() == [0]
    alone = text_blocks(lines, SHAPE, RegionParams(policy="numbers", spread_gap=0), np.array([0, 5, 0]))
    assert alone[:, 7].sum() == 1


def test_private_print_does_not_spread_to_print_of_another_size() -> None:
    """A sign's big letters beside a small sticker with a number are not one document."""
    p = RegionParams(policy="numbers", read_px=16, spread_gap=6.0, spread_ratio=2.0)
    sign = _line(100, 100, 500, 160)  # 60 px letters, no digits
    sticker = _line(600, 170, 640, 180)  # 10 px: too small to read, private; 100 px from the sign
    blocks = text_blocks(np.array([sign, sticker], np.float32), SHAPE, p, np.array([0, -1], np.int16))
    assert len(blocks) == 2
    assert blocks[blocks[:, 6] > 30, 7].tolist() == [0] and blocks[blocks[:, 6] < 30, 7].tolist() == [1]
    same_size = RegionParams(policy="numbers", read_px=16, spread_gap=6.0, spread_ratio=0)  # any size
    blocks = text_blocks(np.array([sign, sticker], np.float32), SHAPE, same_size, np.array([0, -1]))
    assert blocks[:, 7].tolist() == [1, 1]
