"""A job's visual report: one HTML page with its PNG plots next to it.

    syllabus report JOB_ID -o DIR          (or `syllabus run TASK.yaml --report DIR` at the end of a run)

`write_report(data, out_dir)` draws the document `syllabus.report_data.job_report_data` returns:
the verdict per baseline arm, eval accuracy per round for the loop and each arm, training loss per
stage, score histograms of selected vs dropped candidates, the funnel generated -> leaked -> kept ->
selected -> trained, a per-label confusion table (classification) and the errors of the final
evaluation, and the top- and bottom-scored examples with their lineage. Plots are matplotlib (Agg:
no display needed); the page needs nothing but the files in `out_dir`.
"""

from __future__ import annotations

import html
from pathlib import Path

PAGE = "report.html"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.n { text-align: right; } td.hit { background: #d9f2d9; font-weight: bold; }
.verdict { font-family: monospace; font-size: 14px; margin: 2px 0; }
.sig { color: #1a7f37; } .neg { color: #b42318; } .ns { color: #666; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
.muted { color: #777; font-size: 12px; }
"""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _band(ci) -> str:
    """" [lo, hi]" of an accuracy's 95% band in percent, or nothing."""
    return "" if not ci or ci[0] is None else f' <span class="muted">[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>'


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are HTML already (escape text with `_e`)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _plots(data: dict, out: Path) -> dict[str, str]:
    """Draw the plots that have data; name -> file name in `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    files: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        files[name] = f"{name}.png"

    # Eval accuracy per round with its 95% band: the loop from round 0 (the base student), each arm from the same base.
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (name, rounds, acc, lo, hi) in enumerate(accuracy_series(data)):
        style = {"marker": "o", "linewidth": 2.5, "color": "black"} if i == 0 else {"marker": "s", "linestyle": "--"}
        (line,) = ax.plot(rounds, [100 * a for a in acc], label=name, **style)
        banded = [(r, a, b) for r, a, b in zip(rounds, lo, hi, strict=True) if a is not None]
        if banded:
            ax.fill_between([r for r, _, _ in banded], [100 * a for _, a, _ in banded], [100 * b for _, _, b in banded],
                            color=line.get_color(), alpha=0.12, linewidth=0)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0: the base student)")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Eval accuracy per round")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    save(fig, "accuracy")

    # Training loss per step: the loop's round runs, split by recipe stage; the arms' faint.
    runs = [t for t in data["training"] if t["losses"]]
    if runs:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for t in runs:
            if t["stage"] in ("sft", "recipe"):
                start = 0
                stages = [st for st in t["stages"] if st["steps"] > 0] or [{"name": t["stage"], "steps": len(t["losses"])}]
                for st in stages:
                    ys = t["losses"][start : start + st["steps"]]
                    ax.plot(range(start + 1, start + len(ys) + 1), ys, label=f"round {t['round']} {st['name']}")
                    start += st["steps"]
            elif t["stage"].startswith("baseline-"):
                ax.plot(range(1, len(t["losses"]) + 1), t["losses"], alpha=0.35, linewidth=1, label=f"round {t['round']} {t['stage']}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss per stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "loss")

    # Scores of the selected vs the dropped candidates.
    score_rounds = [r for r in data["scores"]["rounds"] if r["selected"] or r["dropped"]]
    if score_rounds:
        fig, axes = plt.subplots(1, len(score_rounds), figsize=(min(3.6 * len(score_rounds), 11), 3.4), squeeze=False)
        for ax, r in zip(axes[0], score_rounds, strict=True):
            values = r["selected"] + r["dropped"]
            bins = min(20, max(5, len(values) // 2))
            lo, hi = min(values), max(values)
            span = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
            ax.hist([r["selected"], r["dropped"]], bins=bins, range=span, label=["selected", "dropped"], color=["#2b8a3e", "#adb5bd"])
            ax.set_title(f"round {r['round']}")
            ax.set_xlabel(data["scores"]["column"] or "score")
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(axis="x", labelsize=8)
        axes[0][0].set_ylabel("candidates")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Scores of selected vs dropped candidates")
        save(fig, "scores")

    # The funnel.
    f = data["funnel"]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    names = ["generated", "leaked", "kept", "selected", "trained"]
    values = [f[n] for n in names]
    colours = ["#1c7ed6", "#adb5bd", "#2b8a3e", "#e8590c", "#c92a2a"]  # generated ... trained
    bars = ax.barh(names[::-1], values[::-1], color=colours[::-1])
    for bar, v in zip(bars, values[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v}", va="center", fontsize=9)
    ax.set_xlabel("examples (all rounds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Funnel, all rounds (leaked: dropped; trained: selected + seeds)")
    save(fig, "funnel")
    return files


def accuracy_series(data: dict) -> list[tuple[str, list[int], list[float], list[float | None], list[float | None]]]:
    """What the accuracy plot draws: (name, rounds, accuracy, band low, band high) for the loop, then
    each arm (from the base student at round 0, the same point as the loop's)."""
    loop = data["accuracy"]["loop"]
    band = {r: (lo, hi) for r, lo, hi in data["accuracy"].get("loop_ci", [])}
    out = []
    if loop:
        rounds = [r for r, _ in loop]
        out.append(("loop", rounds, [a for _, a in loop], [band.get(r, (None, None))[0] for r in rounds],
                    [band.get(r, (None, None))[1] for r in rounds]))  # fmt: skip
    base = [(0, a, *band.get(0, (None, None))) for r, a in loop if r == 0]
    for b in data["baselines"]:
        points = base + [(x["round"], x["accuracy"], *(x.get("accuracy_ci") or (None, None))) for x in b["rounds"]]
        if points:
            out.append((b["arm"], *[list(col) for col in zip(*points, strict=True)]))
    return out


def _verdict_class(b: dict) -> str:
    if b.get("ci_low") is None:
        return "ns"
    if b["ci_low"] > 0:
        return "sig"
    return "neg" if b["ci_high"] < 0 else "ns"


def render(data: dict, files: dict[str, str], job_extra: dict | None = None) -> str:
    """The page's HTML for `data` with the plot files `files`."""
    j = data["job"]
    parts = [
        f"<h1>Job {_e(j['job_id'])} — {_e(j['task'])}</h1>",
        (f"<p>{_e(j['kind'])} task, {_e(j['status'])}, {j['rounds_total']} round(s). Student accuracy on the eval set: "
         f"base {_pct(j['baseline_accuracy'])} &rarr; final {_pct(j['final_accuracy'])}.</p>"),
    ]  # fmt: skip

    parts.append("<h2>Does the distillation help?</h2>")
    if data["baselines"]:
        for b in data["baselines"]:
            text = b["verdict"] or f"{b['comparison']}: not compared yet"
            parts.append(f'<p class="verdict {_verdict_class(b)}">{_e(text)} <span class="muted">(vs {_e(b["arm"])}, '
                         f"{b['repeats']} repeat(s))</span></p>")  # fmt: skip
        loop = {r: a for r, a in data["accuracy"]["loop"]}
        loop_band = {r: (lo, hi) for r, lo, hi in data["accuracy"].get("loop_ci", [])}
        rows = []
        for b in data["baselines"]:
            for r in b["rounds"]:
                ci = "-" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
                lift = "-" if r["lift"] is None else f"{100 * r['lift']:+.1f}"
                rows.append([_e(b["arm"]), str(r["round"]), _pct(r["accuracy"]) + _band(r.get("accuracy_ci")),
                             _pct(loop.get(r["round"])) + _band(loop_band.get(r["round"])), lift, ci,
                             " / ".join(_pct(a) for a in r.get("accuracies") or []), _e(r["trained"])])  # fmt: skip
        parts.append(_table(["arm", "round", "arm accuracy [95%]", "loop accuracy [95%]", "lift (points)", "95% CI", "per repeat", "trained"],
                            rows, {1, 2, 3, 4, 5, 6, 7}))  # fmt: skip
        parts.append('<p class="muted">Lift: the loop\'s accuracy minus the arm\'s, paired over eval items (pooled over the '
                     "arm's repeats), with a percentile-bootstrap 95% interval; significant when it excludes 0. An accuracy's "
                     "[95%] band is the same bootstrap of the accuracy alone: over the eval items and, for an arm, its repeats "
                     "(the loop trains once, so its band covers the items only); the plot shades it.</p>")
    else:
        parts.append('<p class="muted">No baseline arms: add <code>baselines: [seeds_only, all_kept, random]</code> to the '
                     "task to see what the generated data, the selection and the curriculum each bought.</p>")  # fmt: skip
    parts.append(f'<img src="{files["accuracy"]}" alt="eval accuracy per round">')

    if data["rounds"]:
        parts.append("<h2>Rounds</h2>")
        rows = [[str(r["round"]), str(r["generated"] + r["leaked"]), str(r["leaked"]), str(r["kept"]), str(r["selected"]),
                 str(r["trained"]), "-" if r["train_loss"] is None else f"{r['train_loss']:.3f}", _pct(r["accuracy"])]
                for r in data["rounds"]]  # fmt: skip
        parts.append(_table(["round", "generated", "leaked", "kept", "selected", "trained", "train loss", "accuracy"], rows, set(range(8))))
    parts.append(f'<img src="{files["funnel"]}" alt="funnel">')
    if "loss" in files:
        parts.append("<h2>Training</h2>" + f'<img src="{files["loss"]}" alt="training loss per stage">')
    if data.get("teachers"):  # token-level distillation: which teacher's distribution each run learnt
        rows = [[str(t["round"]), _e(t["stage"]), _e(t.get("model", "")), _e(t.get("revision", "")), _e(t.get("backend", "")),
                 _e(t.get("context_sha256", "")[:12] or "-"), _e(t.get("logprobs_uri", "").rsplit("/", 1)[-1])]
                for t in data["teachers"]]  # fmt: skip
        parts.append("<h2>Teachers</h2>" + _table(["round", "run", "teacher", "revision", "backend", "context", "log-probs"], rows, {0}))
    if "scores" in files:
        parts.append(f"<h2>Selection ({_e(data['scores']['column'])})</h2>" + f'<img src="{files["scores"]}" alt="score histograms">')

    ev = data["evaluation"]
    if ev:
        parts.append(f"<h2>Final evaluation (round {ev['round']}): {_pct(ev['accuracy'])}, {ev['correct']}/{ev['total']}</h2>")
        if ev["confusion"]:
            cols = ev["labels"]
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join(
                f"<tr><th>{_e(gold)}</th>" + "".join(f'<td class="n{" hit" if i == k else ""}">{n}</td>' for k, n in enumerate(row)) + "</tr>"
                for i, (gold, row) in enumerate(zip(cols, ev["confusion"], strict=False))
            )  # the diagonal (right answers) highlighted
            parts.append("<p class=\"muted\">Rows: gold label; columns: the student's prediction.</p>")
            parts.append(f"<table><tr><th>gold \\ predicted</th>{head}</tr>{body}</table>")
        if ev["errors"]:
            rows = [[_e(x["input"]), _e(x["label"]), _e(x["prediction"])] for x in ev["errors"]]
            parts.append(_table(["input", "gold", "predicted"], rows))

    ex = data["examples"]
    if ex["top"] or ex["bottom"]:
        parts.append(f"<h2>Top- and bottom-scored candidates (round {ex['round']}, {_e(ex['column'])})</h2>")
        for title, items in (("Top", ex["top"]), ("Bottom", ex["bottom"])):
            rows = []
            for x in items:
                critiques = "; ".join(f"{c['mode']}: {'keep' if c['keep'] else 'drop'} ({c['reason'][:80]})" for c in x["critiques"])
                trained = ", ".join(f"r{t['round']} {t['stage']}" for t in x["trainings"]) or "not trained"
                origin = x["method"] + (f" from seed “{x['parent_input'][:60]}”" if x["parent_input"] else "")
                rows.append([f"{x['score']:.4g}", _e(x["input"]), _e(x["label"]), "yes" if x["selected"] else "no",
                             _e(origin), _e(critiques), _e(trained)])  # fmt: skip
            parts.append(f"<h3>{title}</h3>" + _table(["score", "input", "label", "selected", "made by", "critique", "trained in"], rows, {0}))

    if job_extra and job_extra.get("steps"):
        rows = [[str(s["round"]), _e(s["name"]), f"{s['seconds']:.1f}"] for s in job_extra["steps"]]
        parts.append("<h2>Step wall time</h2>" + _table(["round", "step", "seconds"], rows, {0, 2}))
    title = f"Syllabus report — {_e(j['job_id'])}"
    return f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>\n<body>\n' + "\n".join(parts) + "\n</body></html>\n"


def write_report(data: dict, out_dir: Path, job_extra: dict | None = None) -> Path:
    """Write `out_dir`/report.html and its PNG plots; returns the page's path. `job_extra`: the CLI's
    job report (step wall times), when the gateway gave one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(data, out)
    page = out / PAGE
    tmp = out / f".tmp-{PAGE}"
    tmp.write_text(render(data, files, job_extra), encoding="utf-8")
    tmp.replace(page)
    return page
