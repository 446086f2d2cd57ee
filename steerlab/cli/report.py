"""What the commands print about their results: a vector file's diagnostics, layer selection and
selectivity; a labelled run's acceptance and gaps; a prompt-eval run's claims and net scores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from steerlab.cli.app import out

if TYPE_CHECKING:
    from steerlab.runs import JudgeConfig


def print_diagnostics(meta: dict) -> None:
    """The per-layer diagnostics table of a vector file, and its controls' summary."""
    import numpy as np

    per_layer = meta["diagnostics"]["per_layer"]
    selected = set(meta["selected_layers"])
    columns = [("cv_auroc", "CV AUROC"), ("cv_dprime", "CV d'"), ("val_auroc", "val AUROC"),
               ("keyword_hard_auroc", "kw-hard AUROC"),
               ("val_tpr_at_5fpr", "val TPR@5%"), ("val_paired_accuracy", "val paired acc"),
               ("vector_norm", "|v|"), ("token_norm", "mean |h_t|")]  # fmt: skip
    columns = [(key, label) for key, label in columns if key in per_layer]
    table = Table(title=f"{meta['concept']}: {meta['method']} on {meta['locus']} ({meta['model_source']})")
    table.add_column("layer", justify="right")
    for _, label in columns:
        table.add_column(label, justify="right")
    for i, layer in enumerate(meta["layers"]):
        mark = f"*{layer}" if layer in selected else str(layer)
        table.add_row(mark, *(f"{per_layer[key][i]:.3f}" for key, _ in columns))
    out.print(table)
    out.print(selection_text(meta), markup=False)
    ctrl = meta["controls"]["diagnostics"]
    if ctrl:
        idx = [meta["layers"].index(layer) for layer in meta["selected_layers"]]
        vals = np.array([[c["val_auroc"][i] for i in idx] for c in ctrl])
        real = np.mean([per_layer["val_auroc"][i] for i in idx])
        out.print(
            f"{len(ctrl)} random controls, val AUROC at the selected layers: mean {vals.mean():.3f} "
            f"(min {vals.min():.3f}, max {vals.max():.3f}); the real vector: {real:.3f}"
        )


def selection_text(meta: dict) -> str:
    """How the layers were chosen: the rule, the criterion, the candidates, and each chosen layer's rank."""
    rule = meta["selection"]
    text = f"selected layers {meta['selected_layers']} (marked *) by {rule['name']}"
    if "k" in rule:
        text += f" (k={rule['k']})"
    if "rank_by" in rule:  # files fitted before the criterion was recorded lack these
        cands = rule["candidates"]
        span = f"{cands[0]}-{cands[-1]}" if cands == list(range(cands[0], cands[-1] + 1)) else str(cands)
        chosen = ", ".join(
            f"{c['layer']} (rank {c['rank']}, d' {c['cv_dprime']:.2f}, AUROC {c['cv_auroc']:.3f})"
            for c in rule["chosen"]
        )
        text += f", ranked by {rule['by']}, among layers {span} ({rule['candidates_from']}): {chosen}"
    elif "by" in rule:
        text += f", ranked by {rule['by']}"
    return text


def print_selectivity(meta: dict, entries: list[dict], full: bool = False) -> None:
    """Each other concept's cosine and cross-concept AUROCs: at the selected layers, or (``full``) per layer."""
    from steerlab.selectivity import at_layers

    layers, selected = meta["layers"], meta["selected_layers"]
    if not entries:
        out.print("selectivity: no other concept's vector file for this model, locus and layers beside this one")
    for entry in entries:
        parts = [f"cos {at_layers(entry, layers, selected, 'cosine'):.3f}"]
        if entry.get("control_abs_cosine"):
            parts.append(f"controls' |cos| {at_layers(entry, layers, selected, 'control_abs_cosine'):.3f}")
        if entry.get("auroc_on_other_val") is not None:
            parts.append(f"AUROC on its val {at_layers(entry, layers, selected, 'auroc_on_other_val'):.3f}")
        else:
            parts.append(f"AUROC on its val n/a ({entry.get('auroc_on_other_val_missing')})")
        if entry.get("other_auroc_on_this_val") is not None:
            parts.append(f"its AUROC on this val {at_layers(entry, layers, selected, 'other_auroc_on_this_val'):.3f}")
        else:
            parts.append(f"its AUROC on this val n/a ({entry.get('other_auroc_on_this_val_missing')})")
        head = f"selectivity vs {entry['concept']} ({entry['file']}), mean at the selected layers: "
        tail = " (selective: cos near the controls', AUROCs near 0.5)"
        out.print(head + "; ".join(parts) + tail, markup=False)
        if not full:
            continue
        table = Table(title=f"selectivity vs {entry['concept']}")
        cols = [("cosine", "cos"), ("control_abs_cosine", "controls' |cos|"),
                ("auroc_on_other_val", "AUROC on its val"),
                ("other_auroc_on_this_val", "its AUROC on this val")]  # fmt: skip
        cols = [(key, label) for key, label in cols if entry.get(key) is not None]
        table.add_column("layer", justify="right")
        for _, label in cols:
            table.add_column(label, justify="right")
        for i, layer in enumerate(layers):
            mark = f"*{layer}" if layer in selected else str(layer)
            table.add_row(mark, *(f"{entry[key][i]:.3f}" for key, _ in cols))
        out.print(table)


def print_label_summary(run_dir: Path, judge: JudgeConfig | None) -> None:
    from steerlab.harness.judge import Rubric
    from steerlab.runs import label_figure, write_label_summary

    path, summary = write_label_summary(run_dir)
    if summary.get("method") == "prompt":
        print_claims_summary(run_dir, path, summary)
        return
    table = Table(title=f"{run_dir}: acceptance (95% cluster bootstrap over requests)")
    has_judge = any("judge_A_mean" in c for c in summary["curves"])
    for col in ("vector", "multiplier", "condition", "acceptance", "controls min-max",
                *(("judge A", "judge B") if has_judge else ())):  # fmt: skip
        table.add_column(col)
    for c in summary["curves"]:
        if c["condition"] == "gap":
            continue
        ctrl = f"{c['control_min']:.2f}-{c['control_max']:.2f}" if "control_min" in c else "-"
        judged = [f"{c.get(f'judge_{k}_mean', float('nan')):.1f}" for k in ("A", "B")] if has_judge else []
        table.add_row(c["vector"], f"{c['multiplier']:+g}", c["condition"],
                      f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]", ctrl, *judged)  # fmt: skip
    out.print(table)
    if summary["gaps"]:
        title = "gap = monitored - unmonitored (bootstrap 95% over requests; p: paired sign-flip test over requests)"
        gaps = Table(title=title)
        for col in ("vector", "arm", "multiplier", "gap", "p", "seeds mean +- s.e.m."):
            gaps.add_column(col)
        for g in summary["gaps"]:
            seeds = f"{g['seed_mean']:+.3f} +- {g['seed_sem']:.3f}" if "seed_mean" in g else "-"
            gap = f"{g['gap']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
            gaps.add_row(g["vector"], g["arm"], f"{g['multiplier']:+g}", gap, f"{g['p']:.3g}", seeds)
        out.print(gaps)
    concepts = {"A": "A", "B": "B"}
    if judge is not None and Path(judge.rubric).is_file():
        concepts = {k: c.name for k, c in Rubric.load(judge.rubric).concepts.items()}
    fig = label_figure(run_dir, summary, concepts)
    out.print(f"wrote {path}" + (f" and {fig}" if fig else ""))


def fmt_interval(d: dict[str, Any]) -> str:
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def print_claims_summary(run_dir: Path, path: Path, summary: dict[str, Any]) -> None:
    """Per-claim gaps and the net scores of a prompt-eval run; draws gaps.png when both families ran."""
    table = Table(title=f"{run_dir}: claims at strength {summary['strength']} "
                  "(gap: bootstrap 95% over requests; p: paired sign-flip test over requests)")  # fmt: skip
    for col in ("claim", "monitored", "unmonitored", "gap", "p"):
        table.add_column(col)
    for row in summary["claims"]:
        rates = [f"{row[c]['rate']:.3f} ({row[c]['compliant']}/{row[c]['n']})" for c in ("monitored", "unmonitored")]
        gap = f"{row['gap']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        table.add_row(row["claim"], *rates, gap, f"{row['p']:.3g}")
    out.print(table)
    net = summary.get("net")
    if net is None:
        out.print("no item was run with both sides (+ and -): no net scores")
        out.print(f"wrote {path}")
        return
    for key in [f"{f}_net" for f in net["families"]] + (["A_minus_B"] if "A_minus_B" in net else []):
        seeds = f"; seeds {net[key]['seed_mean']:+.3f} +- {net[key]['seed_sem']:.3f}" if "seed_mean" in net[key] else ""
        out.print(f"{key} = {fmt_interval(net[key])}{seeds}")
    figures = ""
    if {"A_net", "B_net"} <= set(net):
        from steerlab.profiles import draw, run_profile

        figures = " and " + ", ".join(map(str, draw([run_profile(run_dir, net)], Path(run_dir))))
    out.print(f"wrote {path}{figures}")


FEW_PAIRS = 20  # below this many pairs the summary says the numbers are anecdotal


def print_score(report: dict[str, Any]) -> None:
    """``vectors score``: the per-layer table (selected layers marked *) and the one-line summary."""
    scores, vec, pairs = report["scores"], report["vector"], report["pairs"]
    group, splits = scores["all"], scores["splits"]
    counts = ", ".join(f"{k} {v}" for k, v in pairs["n_pairs"].items() if k != "all")
    title = (
        f"{vec['concept']} vector {vec['file']} on {pairs['file']} ({pairs['n_pairs']['all']} pairs: {counts}; "
        f"concept {', '.join(pairs['concepts'])}; locus {report['locus']})"
    )
    n_ctrl = group["controls"]["n"]
    caption = "AUROC, TPR at 5% FPR, paired accuracy: all pairs"
    if len(splits) > 1:
        caption += f"; {', '.join(splits)}: AUROC per split"
    if n_ctrl:
        caption += f"; controls: AUROC mean [min,max] of {n_ctrl} random controls"
    table = Table(title=escape(title), caption=escape(caption))
    short = {"keyword_hard": "kw_hard"}
    labels = ["layer", "AUROC", "TPR@5%", "paired", *(short.get(s, s) for s in splits if len(splits) > 1)]
    for label in labels + (["controls"] if n_ctrl else []):
        table.add_column(label, justify="right", no_wrap=True)
    selected = set(report["selected_layers"])
    for i, layer in enumerate(report["layers"]):
        row = [f"*{layer}" if layer in selected else str(layer)]
        row += [f"{group['vector'][m][i]:.3f}" for m in ("auroc", "tpr_at_5fpr", "paired_accuracy")]
        row += [f"{splits[s]['vector']['auroc'][i]:.3f}" for s in splits if len(splits) > 1]
        if n_ctrl:
            c = group["controls"]
            row.append(escape(f"{c['auroc_mean'][i]:.3f} [{c['auroc_min'][i]:.3f},{c['auroc_max'][i]:.3f}]"))
        table.add_row(*row)
    out.print(table)
    s = report["summary"]
    where = "the selected layers" if s["of"] == "selected" else "the scored layers (no selected layer scored)"
    line = f"at {where} {s['layers']} (marked *): mean AUROC {s['auroc_mean']:.3f}"
    if s["controls_n"]:
        line += (
            f"; {s['controls_n']} random controls: mean {s['controls_auroc_mean']:.3f} "
            f"(min {s['controls_auroc_min']:.3f}, max {s['controls_auroc_max']:.3f})"
        )
    out.print(line, markup=False)
    if not report["same_concept"]:
        out.print(
            f"cross-concept check: the vector is for {vec['concept']!r}, the pairs are {pairs['concepts']} "
            "(a selective vector scores near 0.5 on another concept's pairs)",
            markup=False,
        )
    if report["fitted_on_this_file"]:
        out.print(
            "note: the vector was fitted on this pair file; its train pairs are in-sample, not held out", markup=False
        )
    n = pairs["n_pairs"]["all"]
    if n < FEW_PAIRS:  # one pair gives AUROC 0 or 1
        out.print(f"note: only {n} pair(s): the AUROC is coarse and uncertain; score {FEW_PAIRS} or more", markup=False)
