"""Making edits: random scenes, instruction phrasing, edit plans, the edit makers, ``generate`` and dataset
folders on disk.
"""
