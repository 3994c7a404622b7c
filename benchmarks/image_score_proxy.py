"""Which tokens should the image score read? Rules compared on the pseudo-defect validation proxy.

    .venv/bin/python benchmarks/image_score_proxy.py --candidate ib-3ep-lr1e-3 [--candidates benchmarks/candidates_real.yaml]

Reads the weights a ``select_real.py`` run of ``--candidate`` left in its
checkpoint (run that first), computes every modality's raw map once on the
proxy's training samples and on its labelled validation set
(``validation_proxy.py``; the real test samples are never read), then, for each
rule, sets each modality's scale to its mean image maximum over the rule's
tokens on the training samples (as ``ScaledModalityMaps.calibrate`` does) and
takes the image score as the maximum of the smoothed fused map over the rule's
tokens only. The pixel map stays the learner's own (tokens with 3-D points on
at least half of their cell), so P-AUROC and AUPRO do not depend on the rule
and are printed once. Rules:

- ``valid-half``: the learner's own (``valid_tokens``);
- ``valid-90``: tokens whose cell has a 3-D point on at least 90 % of its pixels;
- ``interior``: ``valid-half`` tokens whose eight neighbours are ``valid-half``
  tokens too (the valid mask eroded by one token).

Then, with the learner's own tokens: each modality's mean image maximum on the
training samples and on the validation normals (a model that fits its
training images rather than normal texture scores unseen normals higher), and
the I-AUROC with the scales fitted on half of the validation normals instead
of the training samples, evaluated on the other half and the pseudo-defects
made from it (two folds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, add_threads_option, start_benchmark
from select_real import CACHE

from incad.data.sample import collate
from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.learners import create_learner
from incad.metrics import image_auroc, pixel_metrics
from incad.resolve import load_run
from incad.runner import prepare_data


def cell_fraction(valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): the share of each token's cell that has a 3-D point."""
    return F.adaptive_avg_pool2d(valid[:, None].float(), grid)[:, 0]


def rules(fraction: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, h, w) bool masks of the tokens each rule scores."""
    half = fraction >= 0.5
    # A token is interior when the 3x3 minimum (max-pool of the complement) keeps it.
    interior = ~F.max_pool2d((~half)[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
    return {"valid-half": half, "valid-90": fraction >= 0.9, "interior": interior & half}


@torch.no_grad()
def raw_maps(learner, dataset, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sample's per-modality maps (N, M, h, w), cell fractions (N, h, w), masks and labels."""
    maps, fractions, masks, labels = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        per_modality = learner.modality_maps(batch)
        stacked = torch.stack([per_modality[m] for m in learner.modalities], dim=1)
        maps.append(stacked)
        fractions.append(cell_fraction(batch.valid, tuple(stacked.shape[-2:])))
        masks.append(batch.mask)
        labels.append(batch.label)
    return torch.cat(maps), torch.cat(fractions), torch.cat(masks), torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", required=True, help="a candidate of the candidates file, already run by select_real.py")
    parser.add_argument("--candidates", type=Path, default=Path(__file__).with_name("candidates_real.yaml"))
    parser.add_argument("--class-name", default="cable_gland")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)

    candidate = yaml.safe_load(args.candidates.read_text())["candidates"][args.candidate]
    checkpoint = CACHE / "outputs" / f"select-{args.candidate}" / "checkpoints" / "step_0" / "state.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: not found; run benchmarks/select_real.py --only {args.candidate} first")
    overrides = [
        f"dataset.root={CACHE / 'proxy'}", "dataset.name=mvtec3d", "dataset.preprocessing.enabled=false",
        f"scenario.classes=[{args.class_name}]", "scenario.base=1", "scenario.increment=0", "scenario.steps=0",
        "tracking.enabled=false", *candidate.get("set", []),
    ]
    run = load_run(REPO_ROOT / candidate["scenario"], overrides=overrides)
    config = run.config
    learner = create_learner(run, [args.class_name])
    learner.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["learner"])
    learner.eval()
    prepared = prepare_data(config)
    split = {
        name: prepared.split([args.class_name], name, {args.class_name: 0}, True, config.dataset.image_size, config.dataset.on_bad_sample)
        for name in ("train", "test")
    }
    train_maps, train_fraction, _, _ = raw_maps(learner, split["train"])
    maps, fraction, masks, labels = raw_maps(learner, split["test"])
    sigma, size = config.evaluation.smoothing_sigma, tuple(masks.shape[-2:])

    def fused(maps: torch.Tensor, scored: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return upsample_and_smooth((maps * scored[:, None] / scale[None, :, None, None]).amax(dim=1), size, sigma)

    own, train_own = rules(fraction)["valid-half"], rules(train_fraction)["valid-half"]
    own_scale = image_maxima(train_maps, train_own).mean(dim=0).clamp_min(1e-8)
    pixel = pixel_metrics(fused(maps, own, own_scale), masks)
    print(f"{args.candidate}: pixel map (every rule) " + ", ".join(f"{key} {value:.3f}" for key, value in pixel.items()))
    print("| image-score tokens | I-AUROC | tokens scored (validation normals) |\n|---|---|---|")
    train_rules, test_rules = rules(train_fraction), rules(fraction)
    for name, scored in test_rules.items():
        scale = image_maxima(train_maps, train_rules[name]).mean(dim=0).clamp_min(1e-8)
        scores = image_scores(fused(maps, scored, scale))
        share = scored[labels == 0].float().mean().item()
        print(f"| {name} | {image_auroc(scores, labels):.3f} | {share:.2f} |")

    maxima = image_maxima(maps, own)
    print("\n| modality | mean image maximum, training | validation normals | ratio |\n|---|---|---|---|")
    for index, modality in enumerate(learner.modalities):
        seen, unseen = own_scale[index].item(), maxima[labels == 0, index].mean().item()
        print(f"| {modality} | {seen:.3f} | {unseen:.3f} | {unseen / seen:.2f} |")
    # Validation sample i is test/good i and, with a pseudo-defect, test/pseudo i (validation_proxy.py).
    normals, pseudo = (labels == 0).nonzero().flatten(), (labels == 1).nonzero().flatten()
    if len(normals) != len(pseudo):
        raise SystemExit(f"expected one pseudo-defect per validation normal, got {len(pseudo)} and {len(normals)}")
    print("\n| scales fitted on | I-AUROC, fold 1 | fold 2 |\n|---|---|---|")
    figures: dict[str, list[str]] = {"training samples": [], "the other half of the validation normals": []}
    for fold in (0, 1):
        calibration = torch.arange(len(normals)) % 2 == fold
        held_out = torch.cat([normals[~calibration], pseudo[~calibration]])
        held_out_scale = maxima[normals[calibration]].mean(dim=0).clamp_min(1e-8)
        for label, scale in zip(figures, (own_scale, held_out_scale)):
            scores = image_scores(fused(maps[held_out], own[held_out], scale))
            figures[label].append(f"{image_auroc(scores, labels[held_out]):.3f}")
    for label, row in figures.items():
        print(f"| {label} | {' | '.join(row)} |")


def image_maxima(maps: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """(N, M): every sample's per-modality map maximum over its scored tokens."""
    return (maps * scored[:, None]).flatten(2).amax(dim=2)


if __name__ == "__main__":
    main()
