"""Flags, YAML keys, their validation and precedence. ``Config`` is the type of a validated configuration."""

from Engineering.config.validated import Config, Section

__all__ = ["Config", "Section"]
