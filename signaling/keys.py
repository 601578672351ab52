"""Typed aiohttp application state (``web.AppKey``) of the signaling app."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from relay.settings import Settings

if TYPE_CHECKING:
    from signaling.base import SignalingState
    from signaling.bodylimit import BodyGuard

SETTINGS_KEY = web.AppKey("settings", Settings)
SIO_KEY = web.AppKey("sio", socketio.AsyncServer)
STATE_KEY: web.AppKey[SignalingState] = web.AppKey("signaling_state")
DETECTOR_NAME_KEY = web.AppKey("detector_name", str)
BODY_GUARD_KEY: web.AppKey[BodyGuard] = web.AppKey("body_guard")
EXPIRY_TASK_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("unpublished_expiry_task")
