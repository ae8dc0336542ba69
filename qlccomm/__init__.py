"""qlccomm: lossless compression for torch.distributed collectives.

    blob = qlccomm.compress(t, codec="qlc")     # 1-D uint8 tensor on t.device
    t2 = qlccomm.decompress(blob)               # bit-exact
"""
from .api import compress, decompress, inspect
from .codebook import Codebook, default_codebook, fit_codebook
from .collectives import all_gather_into_tensor, all_reduce, all_to_all_single, broadcast, reduce_scatter_tensor
from .errors import CodebookError, EncoderError, FormatError, OutputTooLargeError
from .format import FORMAT_VERSION
from .p2p import P2POp, batch_isend_irecv, irecv, isend, recv, send

__version__ = "0.1.0"

__all__ = [
    "compress", "decompress", "inspect", "Codebook", "fit_codebook", "default_codebook",
    "FormatError", "CodebookError", "EncoderError", "OutputTooLargeError", "FORMAT_VERSION",
    "all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "all_to_all_single",
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "P2POp",
]
