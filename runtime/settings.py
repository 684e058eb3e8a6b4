"""The runtime's section of the settings; the emulator's Settings composes it."""

from __future__ import annotations

import msgspec


class RuntimeSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8765
    # "auto" picks CUDA when present, else CPU.
    device: str = "auto"
