"""The run report: ``report.html``, one self-contained page that shows where a run's items went.

Everything on it comes from the run store and the files in the run directory, so the page
can be rebuilt for any run, finished or not; a section with no data says so in one line.
Charts are plotly figures, and plotly.js is inlined once, so the file opens offline and can
be mailed or archived as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
from omegaconf import OmegaConf
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ..config import as_dict
from ..outcomes import ACCEPTED, KEPT, READY, SOLVED, TAMPERED, UNSOLVED
from ..budget import spend
from .. import hookimpl
from ..stage import Stage, model_stages, pipeline, stage_classes
from ..tallies import judge_scores
from ..store import DONE, FAILED, json_field
from ..tables import write_text_atomic
from ..page import Section, atif_turn, chart, empty, fmt, section, table

if TYPE_CHECKING:
    from ..run import Run

REPORT_FILE = "report.html"
#: trajectories shown in the viewer; the rest are counted, not rendered, to keep the page light
MAX_TRAJECTORIES = 50
#: rows of the per-task cost table
MAX_TASK_ROWS = 50
#: the record fields the page holds for every item of these stages (one item per accepted task
#: or rollout); task texts and verifier logs stay in the store, and the viewer fetches them for
#: the trajectories it shows. The task stages (sample, judge) can hold 100k items, so the page
#: reads them as aggregates computed inside SQLite.
RECORD_FIELDS = {
    "environment": ("model", "usage", "base_image", "network"),
    "trajectory": ("task_id", "rollout", "rollout_id", "model", "reward", "status", "turns", "stop_reason", "reason",
                   "usage", "trajectory", "verifier_exit_code", "tampered", "review"),
}
#: sampled tasks by subtopic and judge outcome (a task's judge item is keyed by its id)
TASK_OUTCOMES_SQL = f"""
SELECT {json_field("domain", "s.record")}, {json_field("subtopic", "s.record")}, s.state, j.state, j.outcome, COUNT(*)
FROM items AS s LEFT JOIN items AS j ON j.stage = 'judge' AND j.key = json_extract(s.record, '$.id')
WHERE s.stage = 'sample' GROUP BY 1, 2, 3, 4, 5
"""
#: each prepared task's certificate verdicts (null when preparation did not get that far)
CERTIFICATES_SQL = """
SELECT json_extract(record, '$.certificate.nop'), json_extract(record, '$.certificate.oracle'),
       json_extract(record, '$.certificate.stable'), json_extract(record, '$.certificate.wrong_total'),
       json_extract(record, '$.certificate.wrong_caught'), json_extract(record, '$.certificate.certified'),
       json_extract(record, '$.certificate.repairs'), json_extract(record, '$.certificate.review_passed'),
       json_extract(record, '$.certificate.cheat_trials'), json_extract(record, '$.certificate.cheats_rewarded'), stage
FROM items WHERE stage IN ('environment', 'ingest') AND state = 'done'
  AND json_extract(record, '$.certificate') IS NOT NULL
"""
#: the funnel's name for the tasks of each stage that certifies
CERTIFIED_BY = {"environment": "synthesized", "ingest": "imported"}
OUTCOME_COLORS = {"accepted": "#2ca02c", "rejected": "#d62728", "duplicate": "#7f7f7f", "contaminated": "#9467bd", "judge failed": "#ff7f0e",
                  "sampling failed": "#8c564b", "not judged": "#c7c7c7",
                  "solved": "#2ca02c", "unsolved": "#d62728", "failed": "#ff7f0e", "tampered": "#000000"}

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: #777; font-style: italic; }
.meta { color: #555; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 0.5em; white-space: pre-wrap;
      word-break: break-all; max-height: 24em; overflow: auto; margin: 0.3em 0; }
pre.keystrokes { background: #fffbe6; }
details.trajectory { border: 1px solid #ccc; border-radius: 4px; margin: 0.5em 0; padding: 0.3em 0.8em; }
details.trajectory > summary { cursor: pointer; font-weight: 600; }
.turn { border-left: 3px solid #4c78a8; margin: 0.8em 0; padding-left: 0.8em; }
.turn h4 { margin: 0.2em 0; } .label { font-weight: 600; color: #555; }
.reward-1 { color: #2ca02c; } .reward-0 { color: #d62728; }
"""


def write_report(run: Run) -> Path:
    """Write ``report.html`` into the run directory and return its path."""
    return write_text_atomic(run.path(REPORT_FILE), render(run))


def render(run: Run) -> str:
    data = RunData(run)
    sections = [
        _overview(run, data),
        section("Funnel", "funnel", _funnel(data)),
        section("Domains and subtopics", "subtopics", _subtopics(data)),
        section("Judge scores", "judge", _judge_scores(data)),
        section("Certification", "certification", _certification(data)),
        *(section(*part) for part in stage_sections(run)),
        section("Turns and rewards per trajectory", "rollouts", _rollouts(data)),
        section("Tokens and cost", "usage", _usage(data)),
        section("Trajectories", "viewer", _viewer(data)),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>litecoder run {escape(run.name)}</title><style>{CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def stage_sections(run: Run) -> list[Section]:
    """The sections of the stages that own one (difficulty, evaluation, a plugin's), in
    pipeline order, then by name."""
    classes = stage_classes(run.plugins)
    names = pipeline(run.plugins) + sorted(n for n in classes if n not in pipeline(run.plugins))
    parts = (classes[name]().report_section(run) for name in names)
    return [part for part in parts if part is not None]


class RunData:
    """The store records and run files the report reads, loaded once."""

    def __init__(self, run: Run) -> None:
        self.run = run
        store = run.store
        self.items = {stage: store.items(stage, fields=RECORD_FIELDS[stage]) for stage in RECORD_FIELDS}
        every = sorted(set(run.plugins.registry("stage").names()) | set(store.stage_names()))
        #: the overview's rows: the model stages of the pipeline, and the others that ran
        self.stages = [s for s in model_stages(run.plugins) if s in pipeline(run.plugins) or store.stage_started(s)]
        self.started = {stage: store.stage_started(stage) for stage in every}
        self.counts = {stage: store.counts(stage) for stage in every}
        self.models = {stage: [m for (m,) in store.query(
            "SELECT DISTINCT json_extract(record, '$.model') AS m FROM items WHERE stage = ? AND m IS NOT NULL AND m != '' ORDER BY m",
            (stage,))] for stage in self.stages}
        self.task_outcomes: Counter = Counter()
        for domain, subtopic, sampled, judged, outcome, n in store.query(TASK_OUTCOMES_SQL):
            self.task_outcomes[(domain or "?", subtopic or "?", _task_outcome(sampled, judged, outcome))] += n
        self.certificates = store.query(CERTIFICATES_SQL)
        self.scores, aggregates = judge_scores(store)
        self.aggregates = [a for a in aggregates if a is not None]
        self.scored = len(aggregates)
        #: the config each stage last ran with, as the store recorded it (``stage=report`` itself
        #: may be invoked with other overrides, so ``run.cfg`` is only the fallback)
        self.configs = {stage: json.loads(store.get_meta(f"config:{stage}") or "{}") for stage in every}
        index = run.path("harbor") / "index.jsonl"
        self.harbor = [json.loads(line) for line in index.read_text().splitlines() if line.strip()] if index.is_file() else None
        self.sft = {p.name: sum(1 for line in p.read_text().splitlines() if line.strip())
                    for p in sorted(run.path("sft").glob("*.jsonl"))} if run.path("sft").is_dir() else {}

    def setting(self, stage: str, key: str) -> Any:
        """A stage's setting as recorded (``key`` is dotted), else the current config's."""
        value: Any = self.configs.get(stage) or {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value if value is not None else _config(self.run, key)

    def done(self, stage: str, outcome: str | None = None) -> list:
        return [i for i in self.items[stage] if i.state == DONE and (outcome is None or i.outcome == outcome)]

    def total(self, stage: str) -> int:
        """Items of a stage, done or failed."""
        return self.counts[stage].get(DONE, 0) + self.counts[stage].get(FAILED, 0)

    @property
    def exported(self) -> bool:
        return self.harbor is not None or bool(self.sft)


def _config(run: Run, key: str, default: object = None) -> Any:
    value = OmegaConf.select(run.cfg, key, default=default)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _model(run: Run, stage: str, data: RunData) -> str:
    """The model a stage used as recorded, else as configured."""
    recorded = data.models[stage]
    if recorded:
        return ", ".join(recorded)
    config = data.configs[stage].get("backend") or as_dict(run.backend_config(stage))
    name = str(config.get("model") or config.get("model_path") or "")
    return f"{config.get('type')}: {Path(name).name if '/' in name else name}"


def _overview(run: Run, data: RunData) -> str:
    rows = []
    for stage in data.stages:
        counts = data.counts[stage]
        state = ", ".join(f"{k} {v}" for k, v in counts.items() if k != DONE) or ("ran, no items" if data.started[stage] else "")
        rows.append([stage, state or "not run", _model(run, stage, data)])
    exported = []
    if data.harbor is not None:
        exported.append(f"harbor: {sum(e.get('status') == 'exported' for e in data.harbor)} tasks")
    exported += [f"sft/{name}: {n} rows" for name, n in data.sft.items()]
    rows.append(["export", ", ".join(exported) or "not run", ""])
    rollouts = {i.record.get("rollout") for i in data.items["trajectory"]}
    setting = data.setting
    settings = [
        ["domain", setting("sample", "domain.name")], ["prompts", setting("sample", "prompts.name")],
        ["sampling", f"num_tasks={setting('sample', 'sample.num_tasks')}, n={setting('sample', 'sample.n')}, "
                     f"temperature={setting('sample', 'sample.temperature')}, rounds={run.rounds}"],
        ["judge", f"{setting('judge', 'judge.name')} (threshold {setting('judge', 'judge.threshold')}, "
                  f"{setting('judge', 'judge.aggregation')} of {len(setting('judge', 'judge.criteria') or [])} criteria)"],
        ["image", ", ".join(sorted({i.record["base_image"] for i in data.items["environment"]
                                    if i.record.get("base_image")})) or "no environment prepared"],
        ["networks", f"environment: {setting('environment', 'environment.network')}, "
                     f"teacher: {setting('trajectory', 'trajectory.network')}"],
        ["agent", setting("trajectory", "agent.type")],
        ["rollouts per task", len(rollouts) if rollouts else _config(run, "trajectory.rollouts")],
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<header><h1>litecoder run <code>{escape(run.name)}</code></h1>"
            f"<p class='meta'>{escape(str(run.dir))} · report written {generated}</p></header>\n"
            + section("Stages", "stages", table(["stage", "items by outcome", "model"], rows, "table-stages"))
            + "\n" + section("Configuration", "config", table(["setting", "value"], settings, "table-config")))


def _funnel(data: RunData) -> str:
    if not data.total("sample"):
        return empty("Nothing sampled yet: run stage=sample.")
    steps: list[tuple[str, int | None]] = [("sampled", data.total("sample"))]
    judged = data.started["judge"]
    left_out = data.counts["judge"].get("duplicate", 0) + data.counts["judge"].get("contaminated", 0)
    steps.append(("unique, not in a benchmark", data.total("judge") - left_out if judged else None))
    steps.append(("accepted", data.counts["judge"].get(ACCEPTED, 0) if judged else None))
    steps.append(("environment ready", len(data.done("environment", READY)) if data.started["environment"] else None))
    solved = {i.record["task_id"] for i in data.done("trajectory") if i.record.get("reward") == 1}
    steps.append(("solved", len(solved) if data.started["trajectory"] else None))
    if data.harbor is not None:
        exported: int | None = sum(e.get("status") == "exported" for e in data.harbor)
    elif data.sft:
        exported = len({i.record["task_id"] for i in data.done("trajectory", KEPT)})
    else:
        exported = None
    steps.append(("exported", exported))
    shown = [(name, n) for name, n in steps if n is not None]
    missing = [name for name, n in steps if n is None]
    fig = go.Figure(go.Funnel(y=[n for n, _ in shown], x=[v for _, v in shown], textinfo="value+percent initial",
                              marker={"color": "#4c78a8"}))
    fig.update_layout(title="Tasks at each stage (sampled counts failed samples too)")
    note = empty(f"Not reached yet: {', '.join(missing)}.") if missing else ""
    return chart(fig, "chart-funnel", 360) + note


def certification_funnel(certificates: list[tuple]) -> list[tuple[str, int]]:
    """Tasks past each check, in order (each step counts tasks that passed it and every
    earlier one): prepared, nop ok, oracle ok, stable, wrong solutions caught, review passed,
    cheat trials caught, certified. A check that was not run (no review, no trial) is passed."""
    steps = [("prepared", lambda c: True), ("nop ok", lambda c: c[0]), ("oracle ok", lambda c: c[1]),
             ("stable", lambda c: c[2]), ("wrong solutions caught", lambda c: (c[4] or 0) == (c[3] or 0)),
             ("review passed", lambda c: c[7] is not False and c[7] != 0),
             ("cheat trials caught", lambda c: not c[9]), ("certified", lambda c: c[5])]
    passed, funnel = list(certificates), []
    for name, ok in steps:
        passed = [c for c in passed if ok(c)]
        funnel.append((name, len(passed)))
    return funnel


def _certification(data: RunData) -> str:
    if not data.certificates:
        return empty("No certified or rejected task yet: run stage=environment (with certify.enabled=true) "
                      "or stage=ingest.")
    fig = go.Figure()
    for stage, name in CERTIFIED_BY.items():
        certificates = [c[:10] for c in data.certificates if c[10] == stage]
        if certificates:
            funnel = certification_funnel(certificates)
            fig.add_trace(go.Funnel(name=name, y=[n for n, _ in funnel], x=[v for _, v in funnel],
                                    textinfo="value+percent initial"))
    fig.update_layout(title="Tasks past each certification check (imported tasks: wrong solutions, review and "
                            "cheat trials are not tried)")
    tried = sum(c[3] or 0 for c in data.certificates)
    caught = sum(c[4] or 0 for c in data.certificates)
    repaired = sum(1 for c in data.certificates if (c[6] or 0) > 0 and c[5])
    reviewed = [c[7] for c in data.certificates if c[7] is not None]
    trials, rewarded = sum(c[8] or 0 for c in data.certificates), sum(c[9] or 0 for c in data.certificates)
    line = (f"<p>Wrong solutions caught: {caught} of {tried}; task reviews passed: {sum(map(bool, reviewed))} of "
            f"{len(reviewed)}; cheat trials that got the reward: {rewarded} of {trials} (each such task was repaired "
            f"or rejected); tasks certified after a repair round: {repaired}. "
            "Rejection reasons are in environments.parquet and imported.parquet.</p>")
    return line + chart(fig, "chart-certification", 340)


def _task_outcome(sampled: str, judged: str | None, outcome: str | None) -> str:
    """Where a sampled task ended, from its sample state and its judge item's state and outcome."""
    if sampled == FAILED:
        return "sampling failed"
    if judged is None:
        return "not judged"
    return "judge failed" if judged == FAILED else outcome or "not judged"


def _subtopics(data: RunData) -> str:
    if not data.task_outcomes:
        return empty("No sampled tasks yet: run stage=sample.")
    domains = sorted({domain for domain, _, _ in data.task_outcomes})
    counts: Counter = Counter()
    for (domain, subtopic, outcome), n in data.task_outcomes.items():
        counts[(f"{domain} / {subtopic}" if len(domains) > 1 else subtopic, outcome)] += n
    labels = sorted({label for label, _ in counts})
    fig = go.Figure()
    for outcome, color in OUTCOME_COLORS.items():
        values = [counts[(label, outcome)] for label in labels]
        if any(values):
            fig.add_bar(name=outcome, x=labels, y=values, marker_color=color)
    fig.update_layout(barmode="stack", title=f"Sampled tasks per subtopic ({', '.join(domains)}), by judge outcome",
                      yaxis_title="tasks")
    return chart(fig, "chart-subtopics")


def _judge_scores(data: RunData) -> str:
    if not data.scored:
        return empty("No judge scores yet (no task was judged by the model): run stage=judge.")
    criteria = list(data.scores)
    titles = [*criteria, "aggregate"]
    scales = {c.get("name"): (c.get("scale_min"), c.get("scale_max")) for c in data.setting("judge", "judge.criteria") or []}
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    for col, criterion in enumerate(criteria, 1):
        counts = data.scores[criterion]
        low, high = scales.get(criterion) or (None, None)
        low, high = (min(counts) if low is None else low), (max(counts) if high is None else high)
        values = sorted(counts)
        fig.add_trace(go.Bar(x=values, y=[counts[v] for v in values], name=criterion, marker_color="#4c78a8"),
                      row=1, col=col)
        fig.update_xaxes(range=[low - 0.5, high + 0.5], dtick=1, row=1, col=col)
    fig.add_trace(go.Histogram(x=data.aggregates, name="aggregate", marker_color="#f58518"), row=1, col=len(titles))
    fig.update_layout(showlegend=False, yaxis_title="tasks", bargap=0.1)
    return f"<p>Score histograms over {data.scored} tasks the judge scored.</p>" + chart(fig, "chart-judge-scores", 320)


def _rollout_outcome(record: dict) -> str:
    if record.get("tampered"):
        return TAMPERED
    return {1: SOLVED, 0: UNSOLVED}.get(record.get("reward", -1), FAILED)


def _rollouts(data: RunData) -> str:
    records = [i.record for i in data.items["trajectory"]]
    if not records:
        return empty("No trajectories yet: run stage=trajectory.")
    fig = go.Figure()
    for outcome in (SOLVED, UNSOLVED, TAMPERED, FAILED):
        chosen = [r for r in records if _rollout_outcome(r) == outcome]
        if chosen:
            fig.add_bar(name=outcome, x=[r["rollout_id"] for r in chosen], y=[r.get("turns") or 0 for r in chosen],
                        marker_color=OUTCOME_COLORS[outcome],
                        customdata=[[r.get("reward"), r.get("status"), r.get("stop_reason")] for r in chosen],
                        hovertemplate="%{x}<br>turns %{y}<br>reward %{customdata[0]}<br>%{customdata[1]}, "
                                      "stopped: %{customdata[2]}<extra></extra>")
    fig.update_layout(title="Turns per rollout, colored by reward", yaxis_title="turns", xaxis_title="rollout")
    outcomes = Counter(_rollout_outcome(r) for r in records)
    flagged = sum(bool(r.get("review")) for r in records)
    line = (f"<p>{len(records)} rollouts: {outcomes['solved']} solved (reward 1), {outcomes['unsolved']} unsolved, "
            f"{outcomes['tampered']} tampered (the agent changed what the verifier relies on: reward 0), "
            f"{outcomes['failed']} failed; {flagged} flagged as reward hacking by the review; "
            f"{sum(r.get('status') == 'kept' for r in records)} kept by the filters.</p>")
    return line + chart(fig, "chart-trajectories")


def _usage(data: RunData) -> str:
    figures = spend(data.run.store, data.stages)  # the same figures as the end-of-run summary
    stages, total = figures["stages"], figures["total"]
    if not total["requests"] and not total["tokens"]:
        return empty("No model requests recorded yet.")
    fields = ("requests", "prompt_tokens", "completion_tokens", "tokens", "cost_usd")
    rows = [[s["stage"], *(s[f] for f in fields)] for s in stages] + [["total", *(total[f] for f in fields)]]
    for label, key, count in (("per accepted task", "per_accepted_task", figures["accepted_tasks"]),
                              ("per kept trajectory", "per_kept_trajectory", figures["kept_trajectories"])):
        per = figures[key]
        rows.append([f"{label} ({count})", None, None, None, per["tokens"] if per else None, per["cost_usd"] if per else None])
    usage_table = table(["", "requests", "prompt tokens", "completion tokens", "tokens", "cost (USD)"], rows, "table-usage")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    names = [s["stage"] for s in stages]
    fig.add_bar(name="prompt tokens", x=names, y=[s["prompt_tokens"] for s in stages], marker_color="#4c78a8")
    fig.add_bar(name="completion tokens", x=names, y=[s["completion_tokens"] for s in stages], marker_color="#72b7b2")
    if total["cost_usd"]:
        fig.add_trace(go.Scatter(name="cost (USD)", x=names, y=[s["cost_usd"] for s in stages],
                                 mode="lines+markers", marker_color="#e45756"), secondary_y=True)
    fig.update_layout(barmode="stack", title="Tokens and cost per stage")
    fig.update_yaxes(title_text="tokens", secondary_y=False)
    fig.update_yaxes(title_text="USD", secondary_y=True, rangemode="tozero")
    note = "" if total["cost_usd"] else empty(
        "Cost is 0: no prices are configured for these models (prices.<model>, or the backend's "
        "price_input_per_mtok and price_output_per_mtok).")
    return usage_table + note + chart(fig, "chart-usage") + _per_task(data)


def _per_task(data: RunData) -> str:
    """What each accepted task cost from judging on (sampling is shared by whole requests)."""
    total = data.counts["judge"].get(ACCEPTED, 0)
    if not total:
        return empty("No accepted task yet, so no cost per task.")
    accepted = data.run.store.query(
        f"SELECT key, {json_field('subtopic')}, {json_field('usage')} FROM items "
        "WHERE stage = 'judge' AND state = 'done' AND outcome = 'accepted' ORDER BY seq LIMIT ?", (MAX_TASK_ROWS,))
    environments = {i.key: i.record.get("usage") or {} for i in data.items["environment"]}
    rollouts: dict[str, list[dict]] = {}
    for item in data.items["trajectory"]:
        rollouts.setdefault(item.record["task_id"], []).append(item.record)

    def tokens(usage: dict) -> int:
        return int((usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))

    rows = []
    for key, subtopic, usage in accepted:
        usages = [json.loads(usage) if usage else {}, environments.get(key, {})]
        usages += [r.get("usage") or {} for r in rollouts.get(key, [])]
        rows.append([key, subtopic or "", tokens(usages[0]), tokens(usages[1]),
                     sum(tokens(u) for u in usages[2:]), len(rollouts.get(key, [])),
                     sum(1 for r in rollouts.get(key, []) if r.get("reward") == 1),
                     float(sum(u.get("cost_usd") or 0 for u in usages))])
    more = total - len(rows)
    note = empty(f"{more} more accepted tasks not listed.") if more > 0 else ""
    return ("<h3>Per accepted task</h3>"
            + table(["task", "subtopic", "judge tokens", "environment tokens", "trajectory tokens", "rollouts", "solved",
                      "cost (USD)"], rows, "table-tasks") + note)


# -- trajectory viewer -------------------------------------------------------------------------
def _viewer(data: RunData) -> str:
    records = [i.record for i in data.items["trajectory"] if i.record.get("trajectory")]
    records = [r for r in records if (data.run.dir / r["trajectory"]).is_file()]
    if not records:
        return empty("No trajectory files yet: run stage=trajectory.")
    shown = records[:MAX_TRAJECTORIES]
    parts = [_trajectory(data, r, open_=(n == 0)) for n, r in enumerate(shown)]
    if len(records) > len(shown):
        parts.append(empty(f"{len(records) - len(shown)} more trajectories omitted (the viewer shows {MAX_TRAJECTORIES}); "
                            f"their ATIF files are in {data.run.dir / 'trajectories'}."))
    return "\n".join(parts)


def _trajectory(data: RunData, record: dict, open_: bool) -> str:
    trajectory = json.loads((data.run.dir / record["trajectory"]).read_text(encoding="utf-8"))
    task = (data.run.store.record("judge", record["task_id"]) or {}).get("text")
    reward = record.get("reward")
    summary = (f"{escape(record['rollout_id'])} · <span class='reward-{reward}'>reward {fmt(reward)}</span> · "
               f"{escape(str(record.get('status')))} · {record.get('turns') or 0} turns · stopped: "
               f"{escape(str(record.get('stop_reason')))}")
    reason = f"<p><span class='label'>Filters:</span> {escape(record['reason'])}</p>" if record.get("reason") else ""
    task_html = f"<p><span class='label'>Task:</span> {escape(task)}</p>" if task else ""
    agent_steps = [s for s in trajectory.get("steps", []) if s.get("source") == "agent"]
    turns = "\n".join(atif_turn(n, step) for n, step in enumerate(agent_steps, 1)) or empty("The agent made no turn.")
    verifier = (data.run.store.record("trajectory", record["rollout_id"]) or {}).get("verifier_output")
    verifier_html = (f"<div class='verifier'><span class='label'>Verifier (exit {fmt(record.get('verifier_exit_code'))}):"
                     f"</span><pre>{escape(verifier)}</pre></div>") if verifier else ""
    return (f"<details class='trajectory' id='trajectory-{escape(record['rollout_id'])}'{' open' if open_ else ''}>"
            f"<summary>{summary}</summary>{task_html}{reason}{turns}{verifier_html}</details>")


class ReportStage(Stage):
    """Rebuild ``report.html`` for a run, finished or not, without running anything."""

    name = "report"

    def run(self, run: Run) -> dict:
        path = write_report(run)
        rollouts = sum(1 for item in run.store.items("trajectory") if item.record.get("trajectory"))
        return {"file": path.name, "trajectories": rollouts}


@hookimpl
def litecoder_register_stages(register):
    register("report", ReportStage)
