"""Training: ``build_run`` turns a config into a ``Run`` (the only reader of the config), and the run's loop,
its state and exact resume, stages, steps, optimizers and schedules, the time budget and cost
estimate, EMA, distillation, the lr finder, interrupts and progress.

May import ``config``, ``runs``, ``data``, ``models``, ``losses``, ``metrics`` and ``distributed``;
imported by ``use``, ``sweeps`` and ``cli``.
"""
