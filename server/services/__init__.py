"""The master's workflows, one module per domain, under any front end (the CLI, perceusd, tests).

A service takes an :class:`~perceus.server.instance.Instance` (or the narrower typed
things it needs), returns result objects and raises domain errors. It never prints,
prompts or imports click: confirmations are the caller's, between a plan and its apply.
"""
