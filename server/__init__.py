"""The master side: database, configuration, the ``perceus`` command and perceusd."""
