"""firered_core: FireRed-Image-Edit in pure PyTorch, usable without ComfyUI.

Layering: this package never imports ComfyUI, the plugin's ``nodes`` or ``train`` packages, diffusers or peft.
"""

__version__ = "0.1.0"
