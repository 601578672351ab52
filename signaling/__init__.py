"""socket.io signaling and HTTP routes of mosaic-relay (see docs/PROTOCOL.md)."""
