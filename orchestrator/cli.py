"""The `syllabus` command line.

    syllabus demo [--json]              start the embedded stack, run the Banking77 example, stop everything
    syllabus up                         start the embedded stack and leave it running (Ctrl-C stops it)
    syllabus run TASK.yaml [--json] [--report DIR]   submit a task to a running stack and follow it to the end
    syllabus report JOB_ID [-o DIR]     write the job's visual report (DIR/report.html and its plots)
    syllabus jobs list [--task NAME] [--status S] [--json]    (S: running, completed, failed, cancelled, terminated)
    syllabus jobs status|watch|cancel JOB_ID [--json]
    syllabus lineage SAMPLE_ID [--job JOB_ID] [--json]   |   syllabus lineage --training-run ID
    syllabus export JOB_ID --round N --format jsonl|parquet [-o FILE]
    syllabus db upgrade|downgrade|current [--revision REV]

Exit codes: 0 success, 1 the job or the stack failed, 2 bad input (task file, arguments).
Configuration comes from SYLLABUS_* env vars (see syllabus/config.py). Also `python -m orchestrator.cli`.
It lives in the orchestrator package, not the shared library: `up` and `demo` run the embedded stack
(`orchestrator.stack`), and the shared library depends on no service and not on the orchestrator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from syllabus.config import Config, load_config
from syllabus.tasks import TaskSpecError, dump_task, load_task

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_TASK = Path(__file__).resolve().parent.parent / "examples" / "banking77" / "task.yaml"
STATUS_NAMES = {0: "unknown", 1: "running", 2: "completed", 3: "failed", 4: "cancelled", 5: "terminated"}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _console(json_mode: bool) -> Console:
    # With --json the human output goes to stderr so stdout's last line is the JSON report.
    stream = sys.stderr if json_mode else sys.stdout
    # Never break URIs and ids; when piped, tables get room for full job ids instead of 80 columns.
    return Console(stderr=json_mode, highlight=False, soft_wrap=True, width=None if stream.isatty() else 200)


class GatewayUnreachable(CliError):
    """No gateway answers at the configured address."""


def _client(config: Config):
    from syllabus import auth
    from syllabus_sdk import SyllabusClient, SyllabusError

    token = auth.client_token(config)
    if not token:
        raise CliError(f"no gateway token: run `syllabus up` (it creates {config.home / 'token'}) or set SYLLABUS_TOKEN")
    try:
        ca = auth.client_ca(config)
    except auth.AuthConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    client = SyllabusClient(config.gateway_address, token=token, root_certificates=ca)
    try:
        client.wait_ready(timeout=5)
    except SyllabusError:
        client.close()
        raise GatewayUnreachable(
            f"cannot reach the Syllabus gateway at {config.gateway_address}: is `syllabus up` running?"
        ) from None
    return client


def _cli_error(e) -> CliError:
    """A SyllabusError as one line: bad input and unknown jobs exit 2, everything else 1."""
    name = e.code.name
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return CliError(f"the gateway refused the token ({name}): set SYLLABUS_TOKEN to a token it knows "
                        "(the local stack's is $SYLLABUS_HOME/token)")
    code = EXIT_USAGE if name in ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS") else EXIT_FAILED
    return CliError(" ".join((e.details or str(e)).split()), code)


def _sdk_call(fn, *args):
    from syllabus_sdk import SyllabusError

    try:
        return fn(*args)
    except SyllabusError as e:
        raise _cli_error(e) from None


# -- report ---------------------------------------------------------------------------------------


def job_report(job, config: Config) -> dict:
    return {
        "job_id": job.job_id,
        "workflow_id": job.job_id,
        "status": STATUS_NAMES.get(job.status, "unknown"),
        "task": job.task_name,
        "baseline_accuracy": job.baseline_accuracy if job.HasField("baseline_accuracy") else None,
        "final_accuracy": job.final_accuracy if job.HasField("final_accuracy") else None,
        "rounds": [
            {"round": r.round, "generated": r.generated, "targeted": r.targeted, "leaked": r.leaked, "kept": r.kept,
             "critique_dropped": dict(sorted(r.critique_dropped.items())),
             "parsing": {s: {f: getattr(c, f) for f in ("replies", "parsed", "retried", "unparsable")}
                         for s, c in sorted(r.parsing.items())},
             "reasoning": {m: {f: getattr(c, f) for f in ("written", "wrong", "failed", "duplicate_paths", "no_consensus", "kept")}
                           for m, c in sorted(r.reasoning.items())},
             "candidates": r.candidates, "selected": r.selected,
             "selection_dropped": dict(sorted(r.selection_dropped.items())), "trained": r.trained,
             "accuracy": r.accuracy, "train_loss": r.train_loss, "adapter_uri": r.adapter_uri,
             "teacher_adapter_uri": r.teacher_adapter_uri or None,
             "tailor_pairs": r.tailor_pairs, "tailor_skipped": r.tailor_skipped or None,
             "win_rate": r.win_rate if r.HasField("win_rate") else None,
             "car": [{f: getattr(c, f) for f in ("method", "produced", "kept", "reward", "loss", "car")} for c in r.car],
             "budget": dict(sorted(r.budget.items()))}
            for r in job.rounds
        ],
        "steps": [{"name": s.name, "round": s.round, "seconds": round(s.seconds, 2)} for s in job.steps],
        "baselines": [_baseline(b) for b in job.baselines],
        "artifacts_uri": job.artifacts_uri,
        "database_url": config.resolved_database_url(),
        "web_ui_url": job.web_ui_url,
        "error": job.error or None,
    }


def _baseline(b) -> dict:
    """One baseline arm of the report: its accuracy per round and the loop's lift over it (the last
    round's on top; fractions, with the 95% CI's ends)."""

    def opt(r, name: str) -> float | None:
        return getattr(r, name) if r.HasField(name) else None

    rounds = [
        {"round": r.round, "accuracy": r.accuracy, "accuracies": list(r.repeat_accuracies), "trained": r.trained,
         "lift": opt(r, "lift"), "ci_low": opt(r, "ci_low"), "ci_high": opt(r, "ci_high"), "verdict": r.verdict or None,
         "adapter_uris": list(r.adapter_uris)}
        for r in b.rounds
    ]  # fmt: skip
    last = rounds[-1] if rounds else {}
    return {"arm": b.arm, "comparison": b.comparison, "repeats": len(last.get("accuracies", [])),
            "accuracy": [r["accuracy"] for r in rounds], "rounds": rounds,
            **{k: last.get(k) for k in ("lift", "ci_low", "ci_high", "verdict")}}  # fmt: skip


def print_report(report: dict, console: Console) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    console.print(f"\n[bold]Job {report['job_id']}[/bold] ({report['task']}): {report['status']}")
    if report["error"]:
        console.print(f"[red]error:[/red] {report['error']}")
    console.print(f"Student accuracy on the eval set: baseline {pct(report['baseline_accuracy'])} -> final {pct(report['final_accuracy'])}")
    if report["rounds"]:
        t = Table(title="Rounds")
        for col in ("round", "generated", "leaked", "kept", "selected", "trained", "train loss", "accuracy"):
            t.add_column(col, justify="right")
        for r in report["rounds"]:
            t.add_row(str(r["round"]), str(r["generated"]), str(r["leaked"]), str(r["kept"]), str(r["selected"]), str(r["trained"]),
                      f"{r['train_loss']:.3f}", pct(r["accuracy"]))
        console.print(t)
    if report["steps"]:
        t = Table(title="Step wall time")
        t.add_column("round", justify="right")
        t.add_column("step")
        t.add_column("seconds", justify="right")
        for s in report["steps"]:
            t.add_row(str(s["round"]), s["name"], f"{s['seconds']:.1f}")
        t.add_row("", "[bold]total[/bold]", f"{sum(s['seconds'] for s in report['steps']):.1f}")
        console.print(t)
    if report["baselines"]:
        t = Table(title="Baselines: the loop's lift over each arm (paired bootstrap 95% CI over eval items)")
        for col in ("arm", "accuracy per round", "lift", "95% CI"):
            t.add_column(col, justify="left" if col == "arm" else "right")
        for b in report["baselines"]:
            ci = "-" if b["ci_low"] is None else f"[{100 * b['ci_low']:+.1f}, {100 * b['ci_high']:+.1f}]"
            lift = "-" if b["lift"] is None else f"{100 * b['lift']:+.1f} points"
            t.add_row(b["arm"], " ".join(pct(a) for a in b["accuracy"]), lift, ci)
        console.print(t)
        for b in report["baselines"]:
            if b["verdict"]:
                console.print(f"  {b['verdict']}")
    console.print(f"Artifacts:   {report['artifacts_uri']}")
    console.print(f"Metadata:    {report['database_url']}")
    console.print(f"Temporal UI: {report['web_ui_url']}")


def follow(client, job_id: str, console: Console):
    """Watch a job with one progress line per step; return the final job."""
    from syllabus_sdk import SyllabusError

    try:
        return _follow(client, job_id, console)
    except SyllabusError as e:  # raised while iterating the watch stream
        raise _cli_error(e) from None


RECONNECT_FOR_S = 180.0  # how long `run` keeps reconnecting to a gateway (or Temporal) that restarts


def _watch(client, job_id: str, console: Console):
    """The job's updates; reconnects while the gateway or Temporal is briefly unavailable (restarting)."""
    from syllabus_sdk import SyllabusError

    down_since = None
    while True:
        try:
            for job in client.watch_job(job_id):
                down_since = None
                yield job
            return
        except SyllabusError as e:
            if e.code.name != "UNAVAILABLE":
                raise
            now = time.monotonic()
            if down_since is None:
                down_since = now
                console.print(f"[dim]gateway unavailable ({e.details[:80]}); reconnecting...[/dim]")
            elif now - down_since > RECONNECT_FOR_S:
                raise
            time.sleep(1.0)


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _follow(client, job_id: str, console: Console):
    bars: dict[tuple[int, str], int] = {}
    done: set[tuple[int, str]] = set()
    job = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task("job", total=None, detail="")
        for job in _watch(client, job_id, console):
            eta = f", ETA {duration(job.job_eta_s)}" if job.HasField("job_eta_s") else ""
            at = f"round {job.current_round}/{job.rounds_total}" if job.current_round else "starting"
            progress.update(overall, detail=f"{at}{eta}" if job.current_step else "done")
            for s in job.steps:
                key = (s.round, s.name)
                if key not in bars:
                    bars[key] = progress.add_task(_label(*key), total=1, detail="")
                if key not in done:
                    progress.update(bars[key], completed=1, detail=f"{s.seconds:.1f}s")
                    progress.stop_task(bars[key])
                    done.add(key)
            if job.current_step:
                key = (job.current_round, job.current_step)
                if key not in done:
                    if key not in bars:
                        bars[key] = progress.add_task(_label(*key), total=None, detail="")
                    eta = f"  ETA {duration(job.step_eta_s)}" if job.HasField("step_eta_s") else ""
                    progress.update(bars[key], detail=f"{job.step_detail}{eta}".strip())
        progress.update(overall, total=1, completed=1)
    return job


def _label(round_: int, step: str) -> str:
    return f"round {round_} {step}" if round_ else step


# -- commands -------------------------------------------------------------------------------------


def _submit_and_follow(config: Config, task_path: Path, json_mode: bool, wait: bool = True, report_dir: Path | None = None) -> int:
    console = _console(json_mode)
    try:
        task = load_task(task_path)
    except TaskSpecError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    client = _client(config)
    with client:
        job = _sdk_call(client.submit_job, dump_task(task))
        console.print(f"submitted job [bold]{job.job_id}[/bold]  ({job.web_ui_url})")
        if not wait:
            if json_mode:
                print(json.dumps(job_report(job, config)))
            return EXIT_OK
        job = follow(client, job.job_id, console) or _sdk_call(client.get_job, job.job_id)
        report = job_report(job, config)
        if report_dir is not None:
            page = _write_report(_sdk_call(client.job_report, job.job_id), report_dir, report)
    print_report(report, console)
    if report_dir is not None:
        console.print(f"Report:      {page}")
    if json_mode:
        print(json.dumps(report))
    return EXIT_OK if report["status"] == "completed" else EXIT_FAILED


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    report_dir = Path(args.report) if args.report else None
    return _submit_and_follow(config, Path(args.task), args.json, wait=not args.no_wait, report_dir=report_dir)


def _write_report(data: dict, out: Path, job: dict | None = None) -> Path:
    from orchestrator.report import write_report

    try:
        return write_report(data, out, job)
    except OSError as e:
        raise CliError(f"cannot write the report to {out}: {e.strerror or e}", EXIT_USAGE) from None


def cmd_report(args: argparse.Namespace, config: Config) -> int:
    """Write the job's report page; print its path."""
    from syllabus import db
    from syllabus.artifacts import open_store
    from syllabus.report_data import ReportDataError, job_report_data

    out = Path(args.output or f"{args.job_id}-report")
    job = None
    try:
        client = _client(config)
    except GatewayUnreachable:
        # No gateway running (e.g. after `syllabus demo`): read the metadata DB and the store directly.
        _console(True).print(f"[dim]gateway not running; reading {config.resolved_database_url()} directly[/dim]")
        sessions = db.session_factory(db.make_engine(config.resolved_database_url()))
        try:
            with sessions() as s:
                data = job_report_data(s, open_store(config.resolved_artifact_url(), config), args.job_id)
        except ReportDataError as e:
            raise CliError(str(e), EXIT_USAGE) from None
    else:  # through the gateway: scoped to the caller's tenant
        with client:
            data = _sdk_call(client.job_report, args.job_id)
            job = job_report(_sdk_call(client.get_job, args.job_id), config)
    print(_write_report(data, out, job))
    return EXIT_OK


def _stack(config: Config, console: Console, task_path: Path | None, replicas: int = 1):
    from orchestrator.stack import Stack, with_metrics

    preload: tuple[str, ...] = ()
    if task_path is not None:
        task = load_task(task_path)
        scorer = (task.score.model.model,) if task.score.model is not None else ()
        preload = tuple(dict.fromkeys((task.student.model, task.teacher.model, *scorer)))
    # Metrics on, at the documented ports unless the config sets others; the stack logs their URLs.
    return Stack(with_metrics(config), preload=preload, log=lambda m: console.print(f"[dim]{m}[/dim]"), replicas=replicas)


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both end `up`/`demo` through their cleanup (even when started in the
    background, where a shell leaves SIGINT ignored)."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def cmd_up(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.stack import StackError

    _stop_on_signals()
    console = _console(False)
    stack = _stack(config, console, DEMO_TASK if DEMO_TASK.is_file() else None, replicas=args.replicas)
    try:
        asyncio.run(stack.start())
        stack.supervise()  # a component that dies is restarted (and logged); jobs carry on
        if args.replicas > 1:
            for name, addresses in stack.addresses.items():
                console.print(f"{name}: {len(addresses)} replicas at {', '.join(addresses)}, each with its worker")
        console.print(f"Syllabus is up. Gateway {config.gateway_address}, Temporal Web UI {config.temporal_ui_url}. Ctrl-C stops.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return EXIT_OK
    except StackError as e:
        raise CliError(str(e)) from None
    finally:
        console.print("stopping...")
        stack.stop()


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.stack import StackError

    task_path = Path(args.task) if args.task else DEMO_TASK
    _stop_on_signals()
    console = _console(args.json)
    try:
        load_task(task_path)
    except TaskSpecError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    stack = _stack(config, console, task_path)
    started = time.monotonic()
    try:
        asyncio.run(stack.start())
        stack.supervise()
        code = _submit_and_follow(config, task_path, args.json)
    except StackError as e:
        raise CliError(str(e)) from None
    finally:
        stack.stop()
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; everything stopped "
                  f"(`syllabus up` shows the finished workflow in the Web UI again)")
    return code


def cmd_jobs(args: argparse.Namespace, config: Config) -> int:
    console = _console(args.json)
    if args.action != "list" and not args.job_id:
        raise CliError(f"syllabus jobs {args.action}: JOB_ID required", EXIT_USAGE)
    with _client(config) as client:
        if args.action == "list":
            jobs = _sdk_call(lambda: client.list_jobs(args.limit, task_name=args.task or "", status=args.status or ""))
            if args.json:
                print(json.dumps([job_report(j, config) for j in jobs]))
                return EXIT_OK
            t = Table()
            for col in ("job id", "task", "status", "rounds", "created"):
                t.add_column(col)
            for j in jobs:
                t.add_row(j.job_id, j.task_name, STATUS_NAMES.get(j.status, "?"), str(j.rounds_total),
                          j.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
            console.print(t)
            return EXIT_OK
        if args.action == "cancel":
            job = _sdk_call(client.cancel_job, args.job_id)
            console.print(f"cancel requested for {job.job_id}")
        elif args.action == "watch":
            follow(client, args.job_id, console)
        job = _sdk_call(client.get_job, args.job_id)
    report = job_report(job, config)
    print_report(report, console)
    if args.json:
        print(json.dumps(report))
    return EXIT_OK


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_sample_lineage(lin, console: Console) -> None:
    g = lin.generation
    console.print(f"[bold]sample {lin.sample_id}[/bold] in job {lin.job_id}: {lin.split}, round {lin.round}")
    console.print(f"  input: {lin.input!r}   label: {lin.label}")
    console.print(f"  generated by: {g.method}" + (f" — teacher {g.teacher_model} @ {g.teacher_revision}, "
                                                   f"template {g.prompt_template_hash}" if g.teacher_model else ""))
    if g.parent_id:
        console.print(f"  parent: {g.parent_id} {g.parent_input!r}")
    console.print(f"  written to: {g.artifact_uri}")
    for c in lin.critiques:
        console.print(f"  critique ({c.mode}): {'keep' if c.keep else 'drop'} — {c.reason}")
    for sc in lin.scores:
        console.print(f"  score round {sc.round}: {sc.metric} = {sc.value:.4f}  (by {sc.model})")
    if lin.selected_in_rounds:
        console.print(f"  selected in rounds: {', '.join(map(str, lin.selected_in_rounds))}")
    for t in lin.trainings:
        after = _pct(t.accuracy_after) if t.HasField("accuracy_after") else "-"
        before = _pct(t.accuracy_before) if t.HasField("accuracy_before") else "-"
        console.print(f"  trained in run {t.training_run_id} (round {t.round}, {t.stage}, loss {t.mean_loss:.3f}) "
                      f"-> {t.adapter_uri}; eval accuracy {before} -> {after}")
    if not lin.trainings:
        console.print("  not trained on")


def _lineage_direct(config: Config, args: argparse.Namespace):
    """Lineage straight from the metadata DB: the same query the gateway runs, for a stopped stack."""
    from syllabus import db
    from syllabus.lineage import sample_lineage, training_run_lineage

    with db.session_factory(db.make_engine(config.resolved_database_url()))() as s:
        if args.sample_id is not None:
            found = sample_lineage(s, args.sample_id, args.job or "")
            if not found:
                raise CliError(f"sample {args.sample_id!r} not found", EXIT_USAGE)
            return found
        run = training_run_lineage(s, args.training_run)
        if run is None:
            raise CliError(f"training run {args.training_run} not found", EXIT_USAGE)
        return run


def cmd_lineage(args: argparse.Namespace, config: Config) -> int:
    from google.protobuf.json_format import MessageToDict

    console = _console(args.json)
    if (args.sample_id is None) == (args.training_run is None):
        raise CliError("syllabus lineage: give a SAMPLE_ID or --training-run ID", EXIT_USAGE)
    try:
        client = _client(config)
    except GatewayUnreachable:
        # No gateway running (e.g. after `syllabus demo`): lineage is one SQL query away anyway.
        console.print(f"[dim]gateway not running; reading {config.resolved_database_url()} directly[/dim]")
        result = _lineage_direct(config, args)
    else:
        with client:
            if args.sample_id is not None:
                result = _sdk_call(client.sample_lineage, args.sample_id, args.job or "")
            else:
                result = _sdk_call(client.training_run_lineage, args.training_run)
    if args.sample_id is not None:
        for lin in result:
            print_sample_lineage(lin, console)
        if args.json:
            print(json.dumps([MessageToDict(x, preserving_proto_field_name=True) for x in result]))
        return EXIT_OK
    run = result
    console.print(f"[bold]training run {run.run.training_run_id}[/bold] of job {run.job_id}: round {run.run.round}, "
                  f"{run.run.stage}, {run.steps} steps, loss {run.run.mean_loss:.3f}")
    console.print(f"  dataset: {run.dataset_uri}\n  adapter: {run.run.adapter_uri}\n  recipe: {run.params_json}")
    console.print(f"  trained on {len(run.sample_ids)} samples: {', '.join(run.sample_ids)}")
    if args.json:
        print(json.dumps(MessageToDict(run, preserving_proto_field_name=True)))
    return EXIT_OK


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from syllabus import db
    from syllabus.export import ExportError, training_set, write_export

    out = Path(args.output or f"{args.job_id}-round{args.round}.{args.format}")
    try:
        client = _client(config)
    except GatewayUnreachable:
        # No gateway running (e.g. after `syllabus demo`): read the metadata DB directly.
        from syllabus.artifacts import open_store

        sessions = db.session_factory(db.make_engine(config.resolved_database_url()))
        try:
            with sessions() as s:
                records = training_set(s, args.job_id, args.round, open_store(config.resolved_artifact_url(), config))
        except ExportError as e:
            raise CliError(str(e), EXIT_USAGE) from None
    else:  # through the gateway: scoped to the caller's tenant
        with client:
            records = _sdk_call(client.export_training_set, args.job_id, args.round)
    try:
        write_export(records, out, args.format)
    except ExportError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    print(f"exported {len(records)} samples of job {args.job_id} round {args.round} to {out}")
    return EXIT_OK


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    from syllabus import db
    from syllabus.migrate import current_revision, downgrade, head_revision, upgrade

    engine = db.make_engine(config.resolved_database_url(), migrate=False)
    if args.action == "upgrade":
        upgrade(engine, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            raise CliError("syllabus db downgrade: --revision required (e.g. base)", EXIT_USAGE)
        downgrade(engine, args.revision)
    print(f"database {engine.url.render_as_string(hide_password=True)}: revision {current_revision(engine) or 'base'} "
          f"(head {head_revision()})")
    return EXIT_OK


def _replica_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 8, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syllabus", description="Distil a teacher LLM into a small student.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="start the embedded stack, run the Banking77 example, stop everything")
    p.add_argument("--task", help="run this task file instead of the Banking77 example")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("up", help="start the embedded stack and leave it running")
    p.add_argument("--replicas", type=_replica_count, default=1, metavar="N",
                   help="processes of each service (teacher, student, trainer), each with a worker on its "
                        "service's task queue, so they share the work (default 1)")  # fmt: skip
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("run", help="submit a task to a running stack and follow it")
    p.add_argument("task", help="task spec YAML (see docs/task-format.md)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    p.add_argument("--report", metavar="DIR", help="at the end, write the job's visual report to DIR (report.html)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("report", help="write a job's visual report: one HTML page with its plots")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", metavar="DIR", help="output directory (default: JOB_ID-report)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("jobs", help="list, inspect, watch or cancel jobs")
    p.add_argument("action", choices=["list", "status", "watch", "cancel"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--limit", type=int, default=50, help="jobs to list")
    p.add_argument("--task", help="list: only jobs of this task name (searches Temporal's SyllabusTask attribute)")
    p.add_argument("--status", choices=["running", "completed", "failed", "cancelled", "terminated"],
                   help="list: only jobs in this status (searches Temporal's SyllabusStatus attribute)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_jobs)
    p = sub.add_parser("lineage", help="trace a sample (or a training run's sample set)")
    p.add_argument("sample_id", nargs="?")
    p.add_argument("--job", help="only this job")
    p.add_argument("--training-run", type=int, help="trace this training run instead of a sample")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_lineage)
    p = sub.add_parser("export", help="export a round's training set with scores")
    p.add_argument("job_id")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    p.add_argument("-o", "--output", help="output file (default: JOB-roundN.FORMAT)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("db", help="database schema migrations")
    p.add_argument("action", choices=["upgrade", "downgrade", "current"])
    p.add_argument("--revision", help="target revision (upgrade default: head)")
    p.set_defaults(fn=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ValueError as e:  # pydantic ValidationError (a ValueError) from a malformed SYLLABUS_* value
        print(f"syllabus: bad configuration: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.fn(args, config)
    except CliError as e:
        print(f"syllabus: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
