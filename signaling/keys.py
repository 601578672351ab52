"""Typed aiohttp application state (``web.AppKey``) of the signaling app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from relay.settings import Settings

if TYPE_CHECKING:
    from signaling.base import SignalingState

SETTINGS_KEY = web.AppKey("settings", Settings)
SIO_KEY = web.AppKey("sio", socketio.AsyncServer)
STATE_KEY: web.AppKey[SignalingState] = web.AppKey("signaling_state")
DETECTOR_NAME_KEY = web.AppKey("detector_name", str)
