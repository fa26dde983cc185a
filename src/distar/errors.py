"""Errors that the command line reports in one line, without a traceback.

:class:`~distar.config.ConfigError` (bad input, exit code 2) lives with the configuration code;
:class:`RunError` is a run that started and had to stop (exit code 1).
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run stopped for a reason reported in one line: non-finite steps, a failed checkpoint write."""
