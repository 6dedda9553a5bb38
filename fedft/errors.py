"""User-facing errors: one clear line, printed by the CLI without a traceback.

The CLI maps ``ConfigError`` to exit code 2 and every other ``FedftError`` to exit code 1.
"""


class FedftError(Exception):
    """An error the user can fix; its message is one line saying what is wrong and how to fix it."""


class ConfigError(FedftError):
    """A bad configuration key or value (exit code 2)."""


class AssetError(FedftError):
    """A missing, unreachable or corrupt offline asset; the message names the fetch command."""


def check(ok: bool, name: str, allowed: str) -> None:
    """Raise a :class:`ConfigError` ``bad value for NAME: must be ALLOWED`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"bad value for {name}: must be {allowed}")
