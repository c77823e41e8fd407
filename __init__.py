"""ComfyUI-FireRed as a ComfyUI custom-node pack: ComfyUI imports this file from ``custom_nodes/<folder>/``.

Importing it registers the FireRed nodes (V1 API) and does nothing else: no torch import, no model loading, no
folder creation, no device probing. The nodes live in the ``nodes/`` subpackage, imported relatively because
ComfyUI owns the top-level name ``nodes``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
