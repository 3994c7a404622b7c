"""Few-shot training sets: ``dataset.shots: k`` keeps k normal training samples per class.

The draw of a class depends only on the run's seed and the class's name, not
on the other classes or the scenario's class order, so a class learned at step
3 of one scenario trains on the same k samples as in a 10-0 run with the same
seed; another seed draws another k.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from incad.data.readers.base import Record
from incad.errors import ConfigError


def draw_shots(records: list[Record], shots: int, seed: int, root: Path) -> list[Record]:
    """``shots`` records of each class in ``records``, drawn without replacement, in listing order."""
    kept: list[Record] = []
    for class_name in dict.fromkeys(record.class_name for record in records):
        own = [record for record in records if record.class_name == class_name]
        if shots > len(own):
            raise ConfigError(
                f"dataset.shots: {shots} but class '{class_name}' has {len(own)} normal training sample(s) in {root}; "
                f"set dataset.shots to {len(own)} or fewer"
            )
        generator = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
        chosen = sorted(generator.choice(len(own), size=shots, replace=False).tolist())
        kept += [own[index] for index in chosen]
    return kept
