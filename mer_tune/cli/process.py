"""What the program does around a command: quieter libraries, glibc's allocator, a fast
exit, Ray stopped when the command ends, and user errors as one line and an exit code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import click

from mer_tune.errors import MerTuneError, SearchInterrupted
from mer_tune.printing import console


def quiet_libraries(debug: bool = False) -> None:
    """MLflow's and Optuna's INFO lines would drown the progress output. A failed trial
    is one progress line, with its error in results.csv and its MLflow run: Tune's own
    report of it (a traceback per try) is left for --debug."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "optuna", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not debug:
        for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
            logging.getLogger(name).addFilter(_not_a_trial_failure)
        logging.getLogger("ray.train._internal.syncer").addFilter(_not_a_renamed_temp_file)


def _not_a_trial_failure(record) -> bool:
    return not record.getMessage().startswith(
        ("Trial task failed for trial", "Trials did not complete")
    )


def _not_a_renamed_temp_file(record) -> bool:
    """Tune copies its saved state to the search folder in the background while the
    searcher writes its next state to a temporary file and renames it: a copy that
    listed the temporary file then finds it gone, and Tune logs the copy's traceback.
    The next copy carries the renamed file, so that one race is left out; any other
    failed copy still shows."""
    text = record.getMessage()
    return not (
        text.startswith("Last sync command failed")
        and "FileNotFoundError" in text
        and "-tmp-" in text
    )


def fast_exit() -> None:
    """Freeze the garbage collector's objects once everything else registered to run at
    exit has run (handlers run last-registered first): the interpreter then skips
    collecting what the OS frees anyway, 1.5 s after a search (benchmarks/RESULTS.md).
    Every file is written and closed before then."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def stop_ray() -> None:
    """The Ray this command started (or joined), stopped now: Ray's own exit hook first
    waits 0.5 s for its workers' last log lines, which this program never prints
    (ray_setup.init_ray: log_to_driver=False)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # A Ctrl-C here leaves it to Ray's exit hook.
        with contextlib.suppress(KeyboardInterrupt):
            ray.shutdown()


# SIGTERM (what `kill`, a cluster scheduler or a container stop sends) stops a command
# as Ctrl-C does, with its own exit status (128 + 15).
TERMINATED = 143
_terminated = False


def _stop_on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def handle_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so a search records the truth
    (unfinished trials and the parent run KILLED) and prints how to resume.
    ray_setup.init_ray puts this handler back after Ray's own."""
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)


def run_program(group: click.Group, argv: list[str] | None) -> None:
    """Run the command line `argv` (None: the program's own arguments, as the program
    itself): user errors become one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if argv is None:  # the program itself, not a caller in the same process
        fast_exit()
        handle_sigterm()
    from mer_tune.method.malloc import tune_malloc

    tune_malloc()
    quiet_libraries(debug)
    try:
        _with_exit_codes(
            lambda: group.main(args=args, prog_name="mer-tune", standalone_mode=False), debug
        )
    finally:
        if argv is None:
            stop_ray()


def _with_exit_codes(command: Callable[[], object], debug: bool) -> None:
    try:
        command()
    except SearchInterrupted as exc:
        click.echo(f"{'terminated' if _terminated else 'interrupted'}: {exc}", err=True)
        sys.exit(TERMINATED if _terminated else exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except MerTuneError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("terminated" if _terminated else "interrupted", err=True)
        sys.exit(TERMINATED if _terminated else 130)
