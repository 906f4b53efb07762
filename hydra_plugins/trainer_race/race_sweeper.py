"""``hydra/sweeper=race`` as Hydra's plugin: the launcher set up as Hydra's own sweepers do, the rest in
trainer/sweeps/race.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RaceSweeper(Sweeper):
    """Successive halving over the swept configurations within one budget (docs/sweeps.md)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from trainer.errors import UserError, fail
        from trainer.sweeps.race import options_from, run_race

        assert self.config is not None and self.hydra_context is not None
        try:
            options = options_from(**self.options)
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            run_race(self.launcher, Path(self.config.hydra.sweep.dir), parser.parse_overrides(arguments), options)
        except UserError as e:  # one paragraph and the mistake's exit code, not Hydra's traceback
            fail(e)
