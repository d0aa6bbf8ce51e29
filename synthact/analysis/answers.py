"""The study's questions and their answers, as one table: the first screen of `synthact compare`, the tail of the
run summary and the first section of the report (one home for all three).

Rows, in the one order (analysis/order.py): per experiment (the sensitivity scans, then the plateau scans), each
verdict of the paper's findings (aggregate.verdicts) with the estimate it rests on, its 95% interval, p, Holm p
and n; then the ladder (aggregate.differences, the sensitivity experiment's headline metric): per step between
rungs, KS(b) - KS(a) with its interval, one row per pair, or, where the pairs would not fit a screen, one row per
step counting its pairs' answers and showing the pair of smallest Holm p. Target axis (the paper's design) first,
then the base axis.
"""

from __future__ import annotations

import math

import pandas as pd

from synthact.analysis import aggregate, rungs, text
from synthact.analysis.order import direction_rank, kind_rank, scan_rank

READING = ("Reading: KS = largest gap between a kind's and real's distributions (0: same, 1: disjoint); "
           "smaller = closer to real.")
TITLE = "The study's questions and their answers (YES = the paper's finding holds; 95% CIs):"
QUESTIONS = {  # check -> (the question, what its estimate is)
    aggregate.CHECK_CLOSEST: ("which kind is closest to real?", "its KS to real"),
    aggregate.CHECK_STRUCTURE: ("is structured closer to real than baseline?", "KS(structured) - KS(baseline)"),
    aggregate.CHECK_GAUSSIAN: ("is gaussian unlike real?", "its KS to real, permutation p < 0.05"),
    aggregate.CHECK_PLATEAU: ("are plateaus shorter than real's?", "mean(kind) - mean(real)"),
}
LADDER = ("ladder: which rung is closer to real?", "KS(b) - KS(a) < 0: b closer")
HOLM_NOTE = "*: not significant after Holm's correction across the grid (Holm p > 0.05; a count: some of those counted)"
COLUMNS = ["experiment", "question", "estimate_of", "where", "subject", "answer", "estimate", "lo", "hi", "p",
           "p_holm", "n"]
CELLS = {"subject": 44, "answer": 26}  # the widest a printed cell gets before it wraps (fits text.WIDTH)
LADDER_ROWS = 12  # more ladder pairs than this: one row per step
WHERE = ("model", "sae", "layer", "read_layer")


def short(variant: str) -> str:
    """A kind's label without what every label says: 'toward:synthetic_cooccur +error (other prompt's)' ->
    'cooccur +error(other)'."""
    return (str(variant).replace("toward:", "").replace("synthetic_", "").replace(" (other prompt's)", "(other)"))


def pair_label(b: str, a: str) -> str:
    """'b vs a', the settings both share said once after a semicolon."""
    wb, wa = short(b).split(), short(a).split()
    shared = [w for w in wb[1:] if w in wa[1:]]
    own = [[w for w in words[1:] if w not in shared] for words in (wb, wa)]
    head = f"{' '.join([wb[0], *own[0]])} vs {' '.join([wa[0], *own[1]])}"
    return head + (f"; {' '.join(shared)}" if shared else "")


def answers(verdicts: pd.DataFrame, differences: pd.DataFrame | None = None,
            comparison: pd.DataFrame | None = None) -> pd.DataFrame:
    """The answers table (COLUMNS), in the paper's order: each verdict, then the ladder's steps."""
    modes = _modes(comparison, verdicts, differences)
    rows = []
    for v in verdicts.to_dict("records"):
        question, of = QUESTIONS.get(v["check"], (v["check"], "estimate"))
        if v["check"] == aggregate.CHECK_PLATEAU:  # which plateau: around T or around A (the detail's first words)
            of += "; " + str(v["detail"]).split(":")[0]
        subject = "all kinds" if v["check"] == aggregate.CHECK_CLOSEST else v["subject"]
        answer = short(v["verdict"]) if v["check"] == aggregate.CHECK_CLOSEST else v["verdict"]
        if " vs " in subject:
            subject = pair_label(*subject.split(" vs ", 1))
        rows.append(_row(v, question, of, short(subject), answer, v))
    rows += _ladder(differences, modes)
    table = pd.DataFrame(rows, columns=[*COLUMNS, "_rank"])
    varying = [c for c in WHERE if len({str(w[c]) for w in table["where"]}) > 1]
    table["where"] = [" ".join(_where(w, varying)) for w in table["where"]]
    order = sorted(range(len(table)), key=lambda i: table["_rank"].iloc[i])
    return table.iloc[order].drop(columns="_rank").reset_index(drop=True)


def _row(v: dict, question: str, of: str, subject: str, answer: str, basis) -> dict:
    axis = v["axis"]
    scan = v.get("scan")
    where = {c: v.get(c) for c in WHERE} | {"panel": v.get("base_kind") if axis == "target" else v.get("direction")}
    rank = (axis != "target", question.startswith("ladder"), scan_rank(v.get("scan_mode"), scan),
            list(QUESTIONS).index(v["check"]) if v.get("check") in QUESTIONS else len(QUESTIONS),
            str(v.get("model")), str(v.get("sae")), v.get("layer"), v.get("read_layer"),
            kind_rank(where["panel"]) if axis == "target" else direction_rank(where["panel"]))
    experiment = ("" if axis == "target" else "base axis, ") + (str(scan) if scan is not None else "")
    return {"experiment": experiment, "question": question, "estimate_of": of, "where": where, "subject": subject,
            "answer": answer, "estimate": basis["estimate"], "lo": basis["lo"], "hi": basis["hi"], "p": basis["p"],
            "p_holm": basis["p_holm"], "n": basis["n"], "_rank": rank}


def _where(where: dict, varying: list[str]) -> list[str]:
    parts = []
    if "model" in varying:
        parts.append(str(where["model"]))
    if "sae" in varying:
        parts.append(str(where["sae"]))
    if "layer" in varying or "read_layer" in varying:
        parts.append(f"L{where['layer']}->R{where['read_layer']}")
    if where["panel"] not in (None, "real"):
        parts.append(f"base {where['panel']}" if not str(where["panel"]).startswith(("toward", "iso", "latent"))
                     else str(where["panel"]))
    return parts


def _modes(*tables) -> dict:
    modes = {}
    for t in tables:
        if t is not None and not t.empty and {"scan", "scan_mode"} <= set(t):
            modes |= dict(zip(t["scan"], t["scan_mode"]))
    return modes


def _ladder(differences: pd.DataFrame | None, modes: dict) -> list[dict]:
    """The ladder's rows: each step's pairs on the sensitivity experiment's headline metric (not the controls,
    nor R1 -> R2, which the structure verdict already answers)."""
    if differences is None or differences.empty:
        return []
    metric = aggregate.SLOPE_METRIC if (differences.metric == aggregate.SLOPE_METRIC).any() else "max_slope"
    rows = differences[(differences.metric == metric) & (differences.scan_mode == aggregate.SLOPE_SCAN)
                       & ~differences.step.isin([rungs.CONTROL_STEP, aggregate.STRUCTURE_STEP])]
    steps = [f"{a} -> {b}" for a, b in rungs.STEPS]
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: steps.index(rows.step.iloc[i]))]
    question, of = LADDER
    out = []
    fold = len(rows) > LADDER_ROWS
    keys = ["axis", "step", *[c for c in ("model", "sae", "layer", "read_layer", "scan", "base_kind", "direction")
                              if c in rows]]
    groups = rows.groupby(keys, sort=False, dropna=False) if fold else ((None, rows.iloc[[i]]) for i in range(len(rows)))
    for _, group in groups:
        first = group.iloc[0]
        a, b = first.step.split(" -> ")
        answers_ = [rung_answer(r, a, b) for r in group.itertuples()]
        best = group.loc[group.ks_diff_p_holm.astype(float).fillna(2).idxmin()] if fold else first
        if fold and len(group) > 1:
            closer = {k: sum(x.startswith(k + " closer") for x in answers_) for k in (b, a)}
            subject = f"{first.step}: {len(group)} pairs (shown: smallest Holm p)"
            answer = f"{b} closer in {closer[b]}/{len(group)}" + (f", {a} in {closer[a]}" if closer[a] else "")
            answer += "*" if any(x.endswith("*") for x in answers_) else ""  # some counted only by their intervals
        else:
            subject, answer = f"{first.step}: {pair_label(first.variant_b, first.variant_a)}", answers_[0]
        v = first.to_dict() | {"check": None, "scan_mode": modes.get(first.get("scan"), first.get("scan_mode"))}
        basis = {"estimate": best.ks_diff, "lo": best.ks_diff_lo, "hi": best.ks_diff_hi, "p": best.ks_diff_p,
                 "p_holm": best.ks_diff_p_holm, "n": best.n}
        out.append(_row(v, question, of, subject, answer, basis))
    return out


def rung_answer(r, a: str, b: str) -> str:
    """'b closer' / 'a closer' by the 95% interval of KS(b) - KS(a), starred where Holm's p is above 0.05."""
    if r.ks_diff_hi < 0 or r.ks_diff_lo > 0:
        star = "*" if not r.ks_diff_p_holm <= aggregate.ALPHA else ""
        return f"{b if r.ks_diff_hi < 0 else a} closer{star}"
    return "no difference"


# --------------------------------------------------------------------------- shown


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The answers as they are printed: where and subject, answer, the estimate with its interval, p, Holm p, n."""
    return pd.DataFrame({
        "subject": [" ".join(p for p in (w, s) if p) for w, s in zip(table["where"], table.subject)],
        "answer": table.answer,
        "estimate [95% CI]": [_estimate(e, lo, hi) for e, lo, hi in zip(table.estimate, table.lo, table.hi)],
        "p": [_p(p) for p in table.p], "Holm p": [_p(p) for p in table.p_holm], "n": table.n.astype("Int64"),
    })


def _estimate(e: float, lo: float, hi: float) -> str:
    if e is None or not math.isfinite(e):
        return ""
    if lo is None or not math.isfinite(lo):
        return _num(e, "", e)
    return f"{_num(e, '+', e, lo, hi)} [{_num(lo, '+', e, lo, hi)}, {_num(hi, '+', e, lo, hi)}]"


def _num(x: float, sign: str = "+", *scale: float) -> str:
    """3 decimals where every number of `scale` is below 10 (KS distances and their differences), else one."""
    return f"{x:{sign}.3f}" if max(map(abs, scale or (x,))) < 10 else f"{x:{sign}.1f}"


def _p(p) -> str:
    return "" if p is None or not math.isfinite(p) else f"{p:.2g}"


def lines(table: pd.DataFrame, limit: int | None = None, more: str = "synthact compare") -> list[str]:
    """The answers as text: the title, the reading guide, then per experiment and question a heading and its rows
    (lines of at most text.WIDTH characters); with `limit`, at most that many lines, the rest counted and
    pointed to `more`."""
    if table.empty:
        return []
    body = shown(table)
    rows = text.table(body, cell=CELLS, indent="  ")
    header, rows = rows[0], rows[1:]
    out = [TITLE, READING, header]
    cuts = _row_starts(body)
    heading = None
    for i in range(len(table)):
        now = (table.experiment.iloc[i], table.question.iloc[i], table.estimate_of.iloc[i])
        block = []
        if now != heading:
            heading = now
            experiment, question, of = now
            block += text.paragraph(f"{experiment + ': ' if experiment else ''}{question} ({of})")
        block += rows[cuts[i]:cuts[i + 1]]
        if limit is not None and len(out) + len(block) + 2 > limit:
            out.append(f"  ... and {len(table) - i} more answers: {more}")
            break
        out += block
    if any(str(a).endswith("*") for a in table.answer):
        out.append(HOLM_NOTE)
    return out


def _row_starts(body: pd.DataFrame) -> list[int]:
    """Where each row's lines start among text.table's lines (a wrapped row takes several)."""
    starts, at = [0], 0
    for i in range(len(body)):
        at += len(text.table(body.iloc[[i]], cell=CELLS)) - 1
        starts.append(at)
    return starts
