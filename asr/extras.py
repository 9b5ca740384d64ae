"""Optional dependencies (`pip install 'asr[EXTRA]'`): imported when a feature needs them, with
one clear message naming the extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature's optional dependency is not installed; the message says what to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or MissingExtraError: "<feature> needs <module>: pip install 'asr[extra]'"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{feature} needs the package '{module.split('.')[0]}', which is not installed: "
            f"pip install 'asr[{extra}]'"
        ) from None
