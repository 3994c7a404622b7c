"""Inference throughput of the reconstruction learner: images/s for rgb+depth at 224x224 on CPU.

Every image is new (feature cache off), so the frozen backbone runs on both
modalities: this is the figure a production line would see. Prints the
quickstart-sized learner and the IUF-sized default side by side.

    .venv/bin/python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import resource
import time

import torch

from incad.data.sample import Batch
from incad.learners.reconstruction import ReconstructionLearner, ReconstructionOptions

SIZES = {
    "quickstart (128-d, 2+2 layers)": dict(hidden_dim=128, num_heads=4, encoder_layers=2, decoder_layers=2, feedforward_dim=512),
    "IUF-sized default (256-d, 4+4 layers)": {},
}


def random_batch(size: int, image_size: int) -> Batch:
    return Batch(
        image=torch.rand(size, 3, image_size, image_size),
        mask=torch.zeros(size, image_size, image_size),
        label=torch.zeros(size, dtype=torch.long),
        object_id=torch.zeros(size, dtype=torch.long),
        defect_type=["good"] * size,
        path=[f"image-{i}" for i in range(size)],
        depth=torch.rand(size, 1, image_size, image_size),
    )


def images_per_second(learner: ReconstructionLearner, batch: Batch, repeats: int = 5) -> float:
    with torch.inference_mode():
        learner.anomaly_map(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            learner.anomaly_map(batch)
        return repeats * len(batch) / (time.perf_counter() - started)


def main() -> None:
    torch.manual_seed(0)
    batch = random_batch(16, 224)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 16, rgb+depth, 224x224, efficientnet-lite0")
    for label, sizes in SIZES.items():
        options = ReconstructionOptions(cache_features=False, **sizes)
        learner = ReconstructionLearner(options, modality="rgb+depth", num_objects=5, image_size=224).eval()
        trainable = sum(p.numel() for p in learner.parameters() if p.requires_grad)
        print(f"{label:<40} {images_per_second(learner, batch):6.1f} images/s   trainable parameters {trainable / 1e6:.2f} M")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
