"""Quantised weight storage: GGML's block formats (the tensors of GGUF files), dequantised in torch at compute time.

::

    from firered_core.quant import GGMLFormat, stored_nbytes
    stored_nbytes((3072, 12288), "Q4_K")        # 21233664 bytes, no file needed (memory tables)
    fmt = GGMLFormat.of("Q8_0", (3072, 3072))  # what a layer's ``weight_format`` holds
    weight = fmt.dequantize(raw_bytes, torch.bfloat16)

=====================  ==========================================================================================
``blocks.py``          the block layouts of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K and their
                       vectorised torch kernels (exact to gguf-py's float32 reference); other types refused by name
``weight_format.py``   ``GGMLFormat``, the ``ops.WeightFormat`` a layer holding raw bytes carries, and helpers
                       that find quantised parameters and their logical shapes
=====================  ==========================================================================================

Reading GGUF files is ``firered_core.loading.gguf_file``'s job; this package needs nothing but torch.
"""

from .blocks import (LAYOUTS, QK_K, BlockLayout, GGMLType, UnsupportedQuantType, blocks_nbytes, dequantize_blocks,
                     layout_of, stored_nbytes, type_name)
from .weight_format import GGMLFormat, logical_shape, quantised_parameters

__all__ = ["GGMLType", "BlockLayout", "LAYOUTS", "QK_K", "layout_of", "type_name", "stored_nbytes", "blocks_nbytes",
           "dequantize_blocks", "UnsupportedQuantType", "GGMLFormat", "quantised_parameters", "logical_shape"]
