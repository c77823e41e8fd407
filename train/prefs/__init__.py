"""Preference pairs for DPO made by the model itself: ``firered prefs`` samples K edits of each instruction with a
checkpoint, scores them with a reward and writes the best and the worst (or the dataset's target and the model's
own failed edit) as a preference manifest (docs/DATA_FORMAT.md, "Preference pairs").
"""
