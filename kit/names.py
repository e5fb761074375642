"""Plain names for runs, blends and submissions: checked in one place, so none can escape its folder."""

from __future__ import annotations

import re

from kit.errors import KitError

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_plain_name(name: str) -> bool:
    return bool(_PLAIN.fullmatch(name)) and ".." not in name


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a plain name: letters, digits, '.', '_' and '-', no separators and no '..'.

    Raises:
        KitError: naming ``what`` (e.g. ``--name`` or ``pipeline name``) and the offending name.
    """
    if not is_plain_name(name):
        raise KitError(
            f"{what} '{name}': use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(no folders, no '..')"
        )
    return name
