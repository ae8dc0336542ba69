"""Typed errors raised by qlccomm."""


class FormatError(ValueError):
    """A stream is corrupt, truncated, or not a qlccomm stream."""


class CodebookError(FormatError):
    """A stream needs a codebook that this process does not have, or peers disagree on one."""


class EncoderError(RuntimeError):
    """An encoder's own invariant failed (a bug, or a tensor changed while it was being coded):
    no stream was written."""


class OutputTooLargeError(MemoryError):
    """A stream declares an output (its size in bytes is in the message) that cannot be
    allocated: more than the decoding device can hold, or the allocation failed."""


class CodebookFitWarning(UserWarning):
    """A fitted codebook codes the tensors it was fitted to in more bits than adaptive coding
    (a code fitted to each tensor, embedded in its stream) would: the samples mix data of
    different shapes (weights with gradients, say); fit each kind apart."""
