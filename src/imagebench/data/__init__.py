"""A trial's images: discovering a folder of class folders and checking its layout (``folders``),
decoding, resizing and splitting them (``load``: ``load_trial_data``), the decode cache shared by
every trial and process (``cache``) and the arrays a backend trains on (``arrays``).

The user's dataset is only ever read. Imports ``core`` and ``store`` paths only.
"""
