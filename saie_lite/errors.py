"""Errors a user can cause. The CLI prints them as one line and exits 2: no traceback."""


class UserError(Exception):
    """Bad input (path, YAML, dataset row, model file, server fault): say what and what to do."""


class PartnerError(UserError):
    """The partner server failed for good (after retries). ``partial`` holds the replies
    of the same batch that did arrive, by index, so none is lost."""

    def __init__(self, message: str):
        super().__init__(message)
        self.partial: dict[int, str] = {}
