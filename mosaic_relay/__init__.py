"""The ``mosaic-relay`` command (``mosaic_relay.cli``) and, in an installed copy, the package data
(``mosaic_relay/static``, ``mosaic_relay/weights``: see pyproject.toml)."""

from importlib import metadata

try:
    __version__ = metadata.version("mosaic-relay")
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
