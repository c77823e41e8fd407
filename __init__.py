"""ComfyUI-FireRed as a ComfyUI custom-node pack: ComfyUI imports this file from ``custom_nodes/<folder>/``.

Importing it registers the FireRed nodes (V1 API) and does nothing else: no torch import, no model loading, no
folder creation, no device probing. The nodes live in the ``nodes/`` subpackage, imported relatively because
ComfyUI owns the top-level name ``nodes``. Imported as a plain module instead of a package (a test runner collecting
a checkout whose folder name is no Python identifier does that), it registers nothing.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
