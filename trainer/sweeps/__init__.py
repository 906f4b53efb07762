"""Multiruns: one job of a sweep (sharing the machine, skip or resume on a re-run, a killed job recorded)
and the summary of all jobs (table, CSV, JSON, plot).

May import ``config``, ``runs`` and ``loop``; imported by ``cli``.
"""
