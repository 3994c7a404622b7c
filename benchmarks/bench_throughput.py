"""Inference throughput of the reconstruction learner: images/s for rgb+depth at 224x224 on CPU.

Every image is new (feature cache off), so the frozen backbone runs on both
modalities: this is the figure a production line would see. Prints the
quickstart-sized learner and the IUF-sized default side by side.

    .venv/bin/python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import argparse

import torch
from common import add_threads_option, learner_images_per_second, peak_gib, start_benchmark

from incad.learners.reconstruction import ReconstructionLearner, ReconstructionOptions

SIZES = {
    "quickstart (128-d, 2+2 layers)": dict(hidden_dim=128, num_heads=4, encoder_layers=2, decoder_layers=2, feedforward_dim=512),
    "IUF-sized default (256-d, 4+4 layers)": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_threads_option(parser)
    start_benchmark(parser.parse_args().threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 16, rgb+depth, 224x224, efficientnet-lite0")
    for label, sizes in SIZES.items():
        options = ReconstructionOptions(cache_features=False, **sizes)
        learner = ReconstructionLearner(options, modality="rgb+depth", class_names=[f"object_{index}" for index in range(5)], image_size=224).eval()
        trainable = sum(p.numel() for p in learner.parameters() if p.requires_grad)
        print(f"{label:<40} {learner_images_per_second(learner, 224, repeats=5):6.1f} images/s   trainable parameters {trainable / 1e6:.2f} M")
    print(f"peak resident memory of this process: {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
