"""Every config key tried with edge values: each either builds or is refused with a UserError (the
one-paragraph exit-2 answer), never another exception from deep inside torch or timm."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf
from support import TINY

EDGES = ["-5", "0", "[]", "''", "1000000"]
SKIP_HUGE = ("data.", "trainer.devices")  # a million images, pixels or processes: a real cost, not a wrong value


def _leaves(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key.startswith(("hydra", "resume", "allow_targets")) or str(k).startswith("_"):
            continue
        if OmegaConf.is_dict(v):
            yield from _leaves(v, key + ".")
        else:
            yield key


@pytest.mark.slow
def test_each_key_with_edge_values_builds_or_gets_the_one_paragraph_answer(tmp_path, monkeypatch):
    from trainer.config.schema import compose_config, explain_overrides
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    monkeypatch.chdir(tmp_path)
    logging.disable(logging.CRITICAL)
    keys = list(_leaves(compose_config(TINY)))
    assert len(keys) > 50
    failures = []
    try:
        for key in keys:
            for edge in EDGES:
                if edge == "1000000" and key.startswith(SKIP_HUGE) and key != "data.num_workers":
                    continue
                override = f"{key}={edge}"
                try:
                    build_run(explain_overrides([*TINY, override]), run_dir=tmp_path / "run")
                except UserError:
                    pass
                except Exception as e:
                    failures.append(f"{override}: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
    finally:
        logging.disable(logging.NOTSET)
    assert not failures, "\n".join(failures)
