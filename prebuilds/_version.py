"""
The version of prebuilds: the one place it is written.

The build reads it (``[tool.hatch.version]`` in ``pyproject.toml``) into the
distribution's metadata, and ``prebuilds.__version__`` and
``prebuilds --version`` return it. To release, set it here, move the
changelog's ``[Unreleased]`` entries under it, commit, and tag ``v<version>``.
"""

from __future__ import annotations


__version__ = "0.1.0.dev0"
