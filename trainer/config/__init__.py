"""What a config may say: the schema (types, ranges, refusals), what a ``_target_`` may build, reading
the user's overrides before Hydra, and reading YAML that someone else wrote (bounded, no aliases).

Imports no torch and no other room: every room may import ``trainer.config``.
"""
