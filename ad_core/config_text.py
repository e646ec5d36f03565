"""Config overrides written as text (`--set key=value` on the CLI, one `key=value` per line on the dashboard).

Torch-free: only the standard library and `ad_core.errors`.
"""

from __future__ import annotations

from typing import Any

from ad_core.errors import ConfigError


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs -> dict (values stay strings; the config dataclass coerces and validates)."""
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides
