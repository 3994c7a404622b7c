"""One reader per folder layout, registered under the dataset names that use it (:mod:`incad.data.readers.registry`).

Importing the package imports every layout module, so the registry is complete
whichever module a caller imports first.
"""

from incad.data.readers import eyecandies, mvtec3d, mvtec_ad, visa  # noqa: F401  (importing registers the readers)
