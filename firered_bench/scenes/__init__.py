"""Scene descriptions and their rendering: palette, scene dataclasses, rendering with masks, whole-image ops.
"""
