"""mosaic-relay media pipeline: detector, mosaic, sanitizer, rooms and fan-out."""
