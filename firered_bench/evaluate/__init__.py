"""The benchmark: running a model over the held-out split (``bench``, ``firered bench``), its report and
marked README table (``report``) and paired comparison of two runs (``compare``, ``firered bench-compare``).
"""
