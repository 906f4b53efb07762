"""Fixtures both tiers use. Shared constants and helpers live in support.py (imported by name);
the end-to-end runner in e2e/runner.py, documented in e2e/conftest.py."""

from __future__ import annotations

import pytest
import support  # noqa: F401  (sets the per-worker torch threads)
from support import CONF


@pytest.fixture
def compose_cfg():
    """Compose the real config with overrides, without running Hydra's app."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
            return compose("train", overrides=list(overrides))

    return _compose
