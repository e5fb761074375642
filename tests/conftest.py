"""Shared fixtures. The helpers behind them live in ``tiny.py`` (imported by name from any test folder).

``make_competition`` builds a tiny competition (``tiny.build_competition``) under ``tmp_path``.
"""

from __future__ import annotations

import pytest
from tiny import TinyCompetition, build_competition


@pytest.fixture
def make_competition(tmp_path):
    """Factory: ``make_competition(name="comp", **kwargs)`` builds a tiny competition under ``tmp_path``."""

    def make(name: str = "comp", **kwargs) -> TinyCompetition:
        return build_competition(tmp_path / name, **kwargs)

    return make
