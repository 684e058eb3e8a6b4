"""The report a person reads: Markdown (or HTML) with PNG plots of the loss curves (and the
learning rate / gradient norm when logged), each finding marked at its step and the best
checkpoint starred."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from dropwire.functions.training_analysis.core import training
from dropwire.functions.training_analysis.core.model import AnalysisOptions, AnalysisResult, RunData

# Points drawn per curve: an 800-pixel-wide plot shows no more, and drawing 10^5 costs seconds.
MAX_PLOTTED = 1000
COLOURS = {"info": "tab:blue", "warning": "tab:orange", "critical": "tab:red"}


@dataclass(frozen=True)
class Report:
    text: str
    #: PNG bytes by file name (the text links them as plots/<name>).
    plots: dict[str, bytes]
    suffix: str


def build_report(result: AnalysisResult, run: RunData | None, options: AnalysisOptions) -> Report:
    plots = _plots(result, run, options) if run is not None else {}
    markdown = _markdown(result, plots)
    if options.report_format == "html":
        return Report(_html(result, plots), plots, ".html")
    return Report(markdown, plots, ".md")


def _plots(result: AnalysisResult, run: RunData, options: AnalysisOptions) -> dict[str, bytes]:
    train = training.find_metric(run.metrics, options.train_loss_metric, training.TRAIN_LOSS)
    val = training.find_metric(run.metrics, options.val_loss_metric, training.VAL_LOSS)
    out = {}
    curves = [s for s in (train, val) if s is not None]
    if curves:
        out["loss.png"] = _figure(curves, result, "loss")
    extra = [s for s in (training.find_marked(run.metrics, training.LR_MARKERS),
                         training.find_marked(run.metrics, training.GRAD_NORM_MARKERS)) if s is not None]
    if extra:
        out["optimizer.png"] = _figure(extra, result, "value")
    return out


def _pyplot():
    """pyplot on the first plot, not when a handler process loads its functions (~1 s)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a handler process
    import matplotlib.pyplot as plt

    return plt


def _figure(series, result: AnalysisResult, ylabel: str) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    figure.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.12)  # fixed margins: one draw per PNG
    try:
        names = {s.name for s in series}
        for s in series:
            stride = max(1, len(s.steps) // MAX_PLOTTED)
            axis.plot(s.steps[::stride], s.values[::stride], label=s.name, linewidth=1.2)
        marked = set()
        for analysis in result.all_analyses():
            step = analysis.findings.step
            if step is None or (analysis.findings.metric and analysis.findings.metric not in names):
                continue
            colour = COLOURS[analysis.findings.severity]
            axis.axvline(step, color=colour, linestyle="--", linewidth=1,
                         label=analysis.rule_id if analysis.rule_id not in marked else None)
            marked.add(analysis.rule_id)
            if analysis.best_checkpoint_step is not None:
                for s in series:
                    if analysis.best_checkpoint_step in s.steps:
                        y = s.values[s.steps.index(analysis.best_checkpoint_step)]
                        axis.scatter([analysis.best_checkpoint_step], [y], marker="*", s=160, color="gold",
                                     edgecolors="black", zorder=5, label="best checkpoint" if "best" not in marked else None)
                        marked.add("best")
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.set_title(f"run {result.run_id}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper right")  # "best" searches every placement: slow on long curves
        out = io.BytesIO()
        figure.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(figure)


def _markdown(result: AnalysisResult, plots: dict[str, bytes]) -> str:
    lines = [f"# Training analysis of run `{result.run_id}`", "",
             f"- request: `{result.request_id}`, status **{result.status}**, {result.execution_time:.2f} s, "
             f"knowledge base {result.knowledge_base_version}", f"- tracking URI: `{result.tracking_uri}`", "",
             result.summary, ""]
    if result.error is not None:
        lines += [f"**{result.error.error}**: {result.error.message}", ""]
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in result.warnings] + [""]
    for name in plots:
        lines += [f"![{name}](plots/{name})", ""]
    findings = result.all_analyses()
    if findings:
        lines += ["## Findings", "", "| severity | rule | finding | step | best checkpoint |", "|---|---|---|---|---|"]
        for a in sorted(findings, key=lambda a: a.findings.severity != "critical"):
            lines.append(f"| {a.findings.severity} | `{a.rule_id}` | {a.findings.description.replace('|', '/')} | "
                         f"{'' if a.findings.step is None else a.findings.step} | "
                         f"{'' if a.best_checkpoint_step is None else a.best_checkpoint_step} |")
        lines.append("")
    if result.actions:
        lines += ["## What to try, in order", ""]
        lines += [f"{x.rank}. {x.action} (for {', '.join(x.addresses)})" + (f"; see {', '.join(x.sources)}" if x.sources else "")
                  for x in result.actions] + [""]
    if result.not_checked:
        lines += ["## Not checked", ""] + [f"- {n.check}: {n.reason}" for n in result.not_checked] + [""]
    return "\n".join(lines)


def _html(result: AnalysisResult, plots: dict[str, bytes]) -> str:
    findings = "".join(
        f"<tr><td>{a.findings.severity}</td><td><code>{html.escape(a.rule_id)}</code></td>"
        f"<td>{html.escape(a.findings.description)}</td><td>{'' if a.findings.step is None else a.findings.step}</td></tr>"
        for a in result.all_analyses())
    images = "".join(f'<p><img src="plots/{name}" alt="{name}"></p>' for name in plots)
    items = lambda xs: "".join(f"<li>{html.escape(x)}</li>" for x in xs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Training analysis {html.escape(result.run_id)}</title>"
            f"</head><body><h1>Training analysis of run {html.escape(result.run_id)}</h1>"
            f"<p>status <b>{result.status}</b>, {result.execution_time:.2f} s</p><p>{html.escape(result.summary)}</p>"
            f"<h2>Warnings</h2><ul>{items(result.warnings)}</ul>{images}"
            f"<h2>Findings</h2><table><tr><th>severity</th><th>rule</th><th>finding</th><th>step</th></tr>{findings}</table>"
            f"<h2>What to try</h2><ol>{items(x.action for x in result.actions)}</ol>"
            f"<h2>Not checked</h2><ul>{items(f'{n.check}: {n.reason}' for n in result.not_checked)}</ul></body></html>")
