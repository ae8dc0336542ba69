"""Typed errors raised by qlccomm."""


class FormatError(ValueError):
    """A stream is corrupt, truncated, or not a qlccomm stream."""


class CodebookError(FormatError):
    """A stream needs a codebook that this process does not have, or peers disagree on one."""
