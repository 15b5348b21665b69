"""On/off switches read from the environment (SPARSEKERN_TUNE, SPARSEKERN_DERIVED_LAYOUTS)."""
import os
import warnings

_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


def env_flag(name: str, default: bool = True) -> bool:
    """Whether the switch `name` is on: unset or empty gives `default`; case and spaces do not
    matter; any other value than on/off warns (a typo must not pass silently) and gives `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _OFF:
        return False
    if value in _ON:
        return True
    warnings.warn(f"{name}={os.environ[name]!r} is neither on ({'/'.join(_ON)}) nor off ({'/'.join(_OFF)}): "
                  f"taken as {'on' if default else 'off'}", stacklevel=3)
    return default
