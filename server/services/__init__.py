"""The master's workflows, one module per domain, callable without the CLI.

Each takes an :class:`~perceus.server.instance.Instance` (or the narrower things it needs),
returns result objects, raises domain errors and reports warnings through a ``warn``
callable; it never prints, prompts or imports click. ``perceus`` commands parse, call one
service (or a plan, then its apply step after asking) and print.
"""
