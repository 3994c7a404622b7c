"""The dataset names ``dataset.name`` accepts: the one list the config, the CLI and the reader registry share.

Kept free of imports so :mod:`incad.config` can read it without loading the readers.
"""

DATASET_NAMES = ("synthetic", "mvtec3d", "folder", "eyecandies", "mvtec_ad", "visa")
