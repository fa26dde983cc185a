"""One module per ``distar`` sub-command (see :mod:`distar.cli`)."""
