"""Two checks of an exported version's Grad-CAM maps on a split of its data (not part of the tests).

    python benchmarks/gradcam_share.py saved_models/dropout03/1 [--split test] [--max N] [--set data.root=DIR ...]

1. Where the mass is: for each correct prediction, the share of the map's mass inside the
   stained white cell (the colour-extraction mask, ``data.color``, of what the model saw),
   against the share a uniform map would have (the mask's area fraction). Images whose mask
   is empty are left out and counted.
2. The model-parameter randomisation test (Adebayo et al. 2018): the layers from the
   feature layer on (last convolution and dense head) re-initialised, the maps for the
   same classes computed again; Spearman's rank correlation with the trained maps, per
   image. Maps that do not depend on the learnt weights would correlate near 1.

Prints one Markdown table row per check (the README's tables).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import numpy as np  # noqa: E402

from keras_blood.config.loading import load_config  # noqa: E402
from keras_blood.data import load_data  # noqa: E402
from keras_blood.evaluation.gradcam import CamNetwork, Explainer, normalise  # noqa: E402
from keras_blood.evaluation.gradcam_checks import mask_share, randomized_top, rank_correlation  # noqa: E402
from keras_blood.preparation.color import color_mask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max", type=int, default=None, help="at most this many images of the split (seeded)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    version = Path(args.version)
    config = load_config(version / "assets.extra" / "config.yaml", args.overrides)
    split = load_data(config.data, config.seed).splits[args.split]
    picks = np.arange(len(split.labels))
    if args.max is not None and args.max < len(picks):
        picks = np.sort(np.random.default_rng(0).permutation(len(picks))[: args.max])
    explainer = Explainer.load(version, config)
    randomised = [CamNetwork.of(randomized_top(n.network)) for n in explainer.networks]

    inputs, cams, random_cams, predictions = [], [], [], []
    for start in range(0, len(picks), 128):
        batch = picks[start : start + 128]
        result = explainer.explain(split.images[batch])
        x = result.inputs.astype("float32")
        inputs.append(result.inputs)
        cams.append(result.cams)
        predictions.append(result.predictions)
        random_cams.append(normalise(np.mean([n(x, result.predictions) for n in randomised], axis=0)))
    inputs, cams, random_cams = np.concatenate(inputs), np.concatenate(cams), np.concatenate(random_cams)
    predictions, labels = np.concatenate(predictions), split.labels[picks]

    masks = color_mask(inputs, config.data.color).numpy()
    correct = predictions == labels
    has_cell = masks.any(axis=(1, 2))
    kept = correct & has_cell
    share = mask_share(cams[kept], masks[kept])
    uniform = masks[kept].mean(axis=(1, 2))
    valid = ~np.isnan(share)  # an all-zero map has no mass to place
    rho = rank_correlation(cams[correct], random_cams[correct])

    name = f"{version.resolve().parent.name} v{version.resolve().name}"
    print(explainer.explained)
    print(
        f"{len(picks)} {args.split} images, accuracy {correct.mean():.3f}; {kept.sum()} correct with a stained "
        f"cell ({(correct & ~has_cell).sum()} correct without one left out), {(~valid).sum()} all-zero maps"
    )
    print("\n| data, model | correct, explained | Grad-CAM mass in the cell | uniform map | Grad-CAM > uniform |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| {config.data.name}, {name} | {valid.sum()} | {share[valid].mean():.3f} | {uniform[valid].mean():.3f} "
        f"| {(share[valid] > uniform[valid]).mean():.1%} |"
    )
    classes = labels[kept][valid]
    print("\n| class | correct, explained | Grad-CAM mass in the cell | uniform map | Grad-CAM > uniform |")
    print("|---|---:|---:|---:|---:|")
    for k, class_name in enumerate(explainer.class_names):
        mine = classes == k
        if mine.any():
            s, u = share[valid][mine], uniform[valid][mine]
            print(f"| {class_name} | {mine.sum()} | {s.mean():.3f} | {u.mean():.3f} | {(s > u).mean():.1%} |")
    print("\n| data, model | correct | Spearman, trained vs randomised top: mean | median | 90th percentile |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| {config.data.name}, {name} | {correct.sum()} | {rho.mean():.3f} | {np.median(rho):.3f} "
        f"| {np.percentile(rho, 90):.3f} |"
    )


if __name__ == "__main__":
    main()
