"""How good are two concepts' pair sets and the vectors fitted on them? The README's before/after table.

    python benchmarks/pair_quality.py --label after                     # the shipped pairs and vectors
    python benchmarks/pair_quality.py --label before --pairs-dir OLD/pairs --vectors-dir OLD/vectors

For the two paper concepts it records, in ``benchmarks/results/pair_quality_<label>.json``:

- the shortcut audit (``steerlab.audit``) per concept and split, and between the concepts' negatives;
- each vector's activation AUROC per layer (CV on train, val, keyword_hard; from its file) and the
  mean at its selected layers, with the selection rule;
- cos(A, B) per layer and each vector's AUROC on the other concept's val pairs (``steerlab.selectivity``;
  the caches the files record must exist);
- each vector scored on the independently written held-out sets (``configs/pairs/heldout``, both
  concepts: its own is the generalisation check, the other's the selectivity check) through
  ``steerlab.scoring`` (the held-out caches are written under runs/score/ or reused; this needs the model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import steerlab
from steerlab.audit import shortcut_audit
from steerlab.models import load_model
from steerlab.pairs import load_pairs, load_validation_config
from steerlab.scoring import ensure_cache, plan, score_vector
from steerlab.selectivity import compare, val_activations
from steerlab.vectors import VectorBundle, finite_json

REPO = Path(__file__).resolve().parent.parent
CONCEPTS = ("researcher_expectations", "retraining_consequences")


def at(values: list[float], layers: list[int], chosen: list[int]) -> float:
    return float(np.mean([values[layers.index(layer)] for layer in chosen]))


def vector_record(bundle: VectorBundle) -> dict:
    meta = bundle.meta
    per_layer, layers, chosen = meta["diagnostics"]["per_layer"], meta["layers"], meta["selected_layers"]
    keys = ("cv_auroc", "cv_dprime", "val_auroc", "keyword_hard_auroc")
    ctrl = np.array(
        [[c["val_auroc"][layers.index(layer)] for layer in chosen] for c in meta["controls"]["diagnostics"]]
    )
    return {
        "pair_file_hash": meta["pair_file_hash"],
        "selected_layers": chosen,
        "selection": meta["selection"],
        "per_layer": {k: per_layer[k] for k in keys if k in per_layer},
        "at_selected": {k: at(per_layer[k], layers, chosen) for k in keys if k in per_layer},
        "controls_val_auroc_at_selected": {
            "mean": float(ctrl.mean()),
            "min": float(ctrl.min()),
            "max": float(ctrl.max()),
        }
        if ctrl.size
        else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="before or after (names the output file)")
    ap.add_argument("--pairs-dir", type=Path, default=REPO / "configs" / "pairs")
    ap.add_argument("--vectors-dir", type=Path, default=REPO / "vectors")
    ap.add_argument("--name", default="smollm2", help="vector file name under VECTORS_DIR/<concept>/")
    ap.add_argument("--heldout-dir", type=Path, default=REPO / "configs" / "pairs" / "heldout")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    started = time.time()

    cfg = load_validation_config(args.pairs_dir / "validate.yaml")
    pairs = [p for c in CONCEPTS for p in load_pairs(args.pairs_dir / f"{c}.jsonl")]
    audit = shortcut_audit(pairs, cfg.shortcut_audit, keywords=cfg.keywords).to_dict()

    files = {c: args.vectors_dir / c / f"{args.name}.safetensors" for c in CONCEPTS}
    bundles = {c: VectorBundle.load(f) for c, f in files.items()}
    vectors = {c: vector_record(b) for c, b in bundles.items()}
    a, b = CONCEPTS
    val_a, why = val_activations(bundles[a].meta, bundles[a].meta["layers"])
    if val_a is None:
        raise SystemExit(f"{files[a]}: {why}")
    cross = compare(bundles[a].vector.directions, bundles[a].meta, val_a, files[b], bundles[b])
    if cross["auroc_on_other_val"] is None:
        raise SystemExit(f"{files[b]}: {cross['auroc_on_other_val_missing']}")

    loaded = None

    def loader(model: str):
        nonlocal loaded
        loaded = loaded or load_model(args.model, device="cpu")
        return loaded

    heldout = {}
    for concept, path in files.items():
        for target in CONCEPTS:
            p = plan(path, args.heldout_dir / f"{target}.jsonl")
            cache = ensure_cache(p, loader, args.model, progress=False)
            report = score_vector(p, cache, p.cache_ready)
            heldout[f"{concept} on {target}"] = {
                "pair_file_hash": report["pairs"]["hash"],
                "n_pairs": report["pairs"]["n_pairs"]["all"],
                "per_layer": {
                    m: report["scores"]["all"]["vector"][m] for m in ("auroc", "tpr_at_5fpr", "paired_accuracy")
                },
                "summary": report["summary"],
            }
    record = {
        "benchmark": "pair_quality",
        "label": args.label,
        "date": time.strftime("%Y-%m-%d"),
        "steerlab_version": steerlab.__version__,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "layers": bundles[a].meta["layers"],
        "shortcut_audit": audit,
        "vectors": vectors,
        "cos_a_b": cross["cosine"],
        "controls_abs_cos": cross.get("control_abs_cosine"),
        "cross_concept_val": {
            f"{a} on {b} val": cross["auroc_on_other_val"],
            f"{b} on {a} val": cross["other_auroc_on_this_val"],
        },
        "heldout": heldout,
        "seconds": round(time.time() - started, 1),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"pair_quality_{args.label}.json"
    out.write_text(json.dumps(finite_json(record), indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    for split in audit["splits"]:
        print(f"audit {split['label']}: {split['auroc']}")
    for c, v in vectors.items():
        print(c, v["selected_layers"], {k: round(x, 3) for k, x in v["at_selected"].items()})
    for k, v in heldout.items():
        print(k, round(v["summary"]["auroc_mean"], 3), "at", v["summary"]["layers"])
    sel = bundles[a].meta["selected_layers"]
    print("cos(A,B) at A's selected layers", round(at(cross["cosine"], record["layers"], sel), 3))


if __name__ == "__main__":
    main()
