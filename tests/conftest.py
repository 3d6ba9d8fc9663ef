"""Shared fixtures. Media is synthesized with PyAV into ``tmp_path``; faces come from images that ship
inside dependencies (scikit-image's astronaut, matplotlib's grace_hopper.jpg)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fsgan_fixtures() -> Path:
    path = FIXTURES / "fsgan"
    if not path.is_dir():
        pytest.skip(f"FSGAN fixtures not found at {path}")
    return path
