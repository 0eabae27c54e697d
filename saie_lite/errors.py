"""Errors a user can cause. The CLI prints them as one line and exits 2: no traceback."""


class UserError(Exception):
    """Bad input (path, YAML, dataset row, model file, server fault): say what and what to do."""


class StopRequested(Exception):
    """Raised inside the loop when Ctrl-C asked for a clean stop after a checkpoint."""
