"""Unit tests of the request dataclasses' validation and of the access helpers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relay.errors import BadRequest, Forbidden
from relay.settings import Settings
from signaling.access import TokenBucket, ViewTokens
from signaling.messages import (
    CreateStreamRequest,
    LeaveRequest,
    ListStreamsRequest,
    PublishRequest,
    Request,
    SetMosaicRequest,
    StopStreamRequest,
    ViewRequest,
    ViewTokenRequest,
)

pytestmark = pytest.mark.timeout(30)

S = Settings()
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def bad(cls: type[Request], data: object, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        cls.from_dict(data, S)


def test_create_stream_valid_and_normalized() -> None:
    req = CreateStreamRequest.from_dict({"title": "  My street ", "category": "walk"}, S)
    assert req == CreateStreamRequest(title="My street", category="walk", private=False)
    assert CreateStreamRequest.from_dict({"title": "t", "category": "c", "private": True}, S).private


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"category": "c"}, "missing field: title"),
        ({"title": "t"}, "missing field: category"),
        ({"title": None, "category": "c"}, "missing field: title"),
        ({"title": 5, "category": "c"}, "title must be a string"),
        ({"title": "   ", "category": "c"}, "title must not be blank"),
        ({"title": "", "category": "c"}, "title must not be empty"),
        ({"title": "a\nb", "category": "c"}, "control characters"),
        ({"title": "x" * (S.max_title_len + 1), "category": "c"}, "title is too long"),
        ({"title": "t", "category": "c" * (S.max_category_len + 1)}, "category is too long"),
        ({"title": "t", "category": "c", "private": 1}, "private must be a boolean"),
        ({"title": "t", "category": "c", "privat": True}, "unknown field"),
    ],
)
def test_create_stream_rejects(data: dict[str, Any], match: str) -> None:
    bad(CreateStreamRequest, data, match)


@pytest.mark.parametrize("payload", [None, "x", 3, [1, 2], ["title"], True])
@pytest.mark.parametrize(
    "cls",
    [
        CreateStreamRequest,
        PublishRequest,
        ViewRequest,
        ListStreamsRequest,
        SetMosaicRequest,
        StopStreamRequest,
        LeaveRequest,
        ViewTokenRequest,
    ],
)
def test_non_dict_payloads_rejected(cls: type[Request], payload: object) -> None:
    bad(cls, payload, "must be a JSON object")


def test_publish_valid() -> None:
    req = PublishRequest.from_dict(
        {"stream_id": "abc-_1", "publish_key": "k", "sdp": SDP, "type": "offer"}, S
    )
    assert (req.stream_id, req.publish_key, req.type) == ("abc-_1", "k", "offer")


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"stream_id": "../etc"}, "stream_id must match"),
        ({"stream_id": "x" * 65}, "stream_id is too long"),
        ({"stream_id": 12}, "stream_id must be a string"),
        ({"publish_key": ""}, "publish_key must not be empty"),
        ({"publish_key": "k" * 257}, "publish_key is too long"),
        ({"sdp": "hello"}, "not a session description"),
        ({"sdp": b"v=0"}, "sdp must be a string"),
        ({"sdp": "v=0\r\n" + "a=x\r\n" * (S.max_sdp_bytes // 5)}, "sdp is too large"),
        ({"type": "answer"}, "type must be one of"),
        ({"type": None}, "missing field: type"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_publish_rejects(patch: dict[str, Any], match: str) -> None:
    data = {"stream_id": "s1", "publish_key": "k", "sdp": SDP, "type": "offer"} | patch
    bad(PublishRequest, data, match)


def test_sdp_size_counts_utf8_bytes() -> None:
    limit = S.max_sdp_bytes
    sdp = "v=0" + "é" * ((limit - 3) // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(sdp) <= limit
    bad(ViewRequest, {"stream_id": "s", "sdp": sdp, "type": "offer"}, "too large")


def test_view_token_optional() -> None:
    assert ViewRequest.from_dict({"stream_id": "s", "sdp": SDP, "type": "offer"}, S).token is None
    assert (
        ViewRequest.from_dict({"stream_id": "s", "sdp": SDP, "type": "offer", "token": "t"}, S).token == "t"
    )
    bad(ViewRequest, {"stream_id": "s", "sdp": SDP, "type": "offer", "token": 5}, "token must be a string")


def test_small_requests() -> None:
    assert ListStreamsRequest.from_dict({}, S) == ListStreamsRequest()
    bad(ListStreamsRequest, {"page": 2}, "unknown field")
    assert (
        SetMosaicRequest.from_dict({"stream_id": "s", "publish_key": "k", "enabled": False}, S).enabled
        is False
    )
    bad(
        SetMosaicRequest, {"stream_id": "s", "publish_key": "k", "enabled": "no"}, "enabled must be a boolean"
    )
    bad(SetMosaicRequest, {"stream_id": "s", "publish_key": "k"}, "missing field: enabled")
    assert StopStreamRequest.from_dict({"stream_id": "s", "publish_key": "k"}, S).publish_key == "k"
    bad(StopStreamRequest, {"stream_id": "s"}, "missing field: publish_key")
    assert LeaveRequest.from_dict({"stream_id": "s", "viewer_id": "v"}, S).viewer_id == "v"
    bad(LeaveRequest, {"stream_id": "s", "viewer_id": []}, "viewer_id must be a string")
    assert ViewTokenRequest.from_dict({"stream_id": "s", "publish_key": "k", "ttl_s": 600}, S).ttl_s == 600.0
    bad(ViewTokenRequest, {"stream_id": "s", "publish_key": "k", "ttl_s": 1}, "ttl_s")
    bad(ViewTokenRequest, {"stream_id": "s", "publish_key": "k", "ttl_s": True}, "ttl_s")


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=20)))
def test_arbitrary_dicts_validate_or_raise_bad_request(data: dict[str, Any]) -> None:
    for cls in (CreateStreamRequest, PublishRequest, ViewRequest, SetMosaicRequest, LeaveRequest):
        try:
            cls.from_dict(data, S)
        except BadRequest:
            pass


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 4


def test_view_tokens() -> None:
    now = [1000.0]
    tokens = ViewTokens(b"s" * 32, clock=lambda: now[0])
    token, expiry = tokens.issue("room1", ttl_s=60)
    assert expiry == 1060
    tokens.check("room1", token)
    for stream_id, tok, match in [
        ("room2", token, "invalid"),  # bound to its stream
        ("room1", None, "required"),
        ("room1", "", "required"),
        ("room1", "garbage", "invalid"),
        ("room1", token[:-1] + ("0" if token[-1] != "0" else "1"), "invalid"),
        ("room1", "1060.é", "invalid"),
        ("room1", "-5." + token.split(".")[1], "invalid"),
    ]:
        with pytest.raises(Forbidden, match=match):
            tokens.check(stream_id, tok)
    other = ViewTokens(b"t" * 32, clock=lambda: now[0])
    with pytest.raises(Forbidden):
        other.check("room1", token)
    now[0] = 1061.0
    with pytest.raises(Forbidden, match="expired"):
        tokens.check("room1", token)
