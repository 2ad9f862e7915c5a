"""Run the grid of Table 1 cells, shared between processes.

This module's one job is running cells: each unfinished cell is claimed
before it runs, so several processes (on one machine or on several that share
``results/``) never run a cell twice; a process waits for, and polls, the cells
others hold; ``--workers`` starts helper processes on this machine, splits the
CPU cores between them, and stops them again on an error, Ctrl-C or SIGTERM.
Assembling and rendering the table is ``reproduce.table``'s job.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras

from reproduce.experiment import row_name
from tversky_keras.claims import ClaimLost, current_holder, try_claim
from tversky_keras.stopping import exit_at_once, stopped_line
from tversky_keras.training import TrainingDiverged


class GridProgress(keras.callbacks.Callback):
    """One line per epoch: which cell, which epoch, and the time left for the grid.

    ``workers`` processes share the cells left, so the time left is divided among them;
    ``worker`` (2, 3, ...) names a helper process in its lines.
    """

    def __init__(self, total_epochs, done_epochs=0, workers=1, worker=None):
        super().__init__()
        self.total_epochs = total_epochs
        self.done_epochs = done_epochs
        self.workers = workers
        self.worker = worker
        self.started = time.perf_counter()
        self.trained_epochs = 0
        self.label = ""

    def on_epoch_end(self, epoch, logs=None):
        self.trained_epochs += 1
        self.done_epochs += 1
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.trained_epochs * (self.total_epochs - self.done_epochs) \
            / self.workers
        loss = (logs or {}).get("loss", float("nan"))
        print(f"  {self.label} epoch {epoch + 1}/{self.params['epochs']} loss {loss:.4f} "
              f"| grid {self.done_epochs}/{self.total_epochs} epochs, "
              f"~{left / 60:.1f} min left", flush=True)


def cell_name(cell):
    """(0.3, 0.7, 1) -> 'a0.3_b0.7/fold1', as ``--cells`` and the table name cells."""
    alpha, beta, fold = cell
    return f"{row_name(alpha, beta)}/fold{fold}"


def unfinished(experiment, cells):
    return [cell for cell in cells if not experiment.is_done(*cell)]


def run_grid(experiment, cells, wait=True, poll=10.0, workers=1, worker=None):
    """Run the selected cells that are not finished, sharing them with other processes.

    Each unfinished cell is claimed (``tversky_keras.claims``) before it runs,
    so processes pointed at the same results folder never run a cell twice.
    With ``wait``, this process then waits for the cells that other processes
    hold, looking every ``poll`` seconds and taking over a claim whose holder
    stopped heart-beating, until every selected cell is finished.

    ``workers`` is how many processes of this machine share the grid (for the
    time left); ``worker`` names a helper process that ``--workers`` started: it
    runs what it can claim and leaves quietly, as the process that started it
    waits and assembles.

    Returns:
        the cells that failed in this process (diverged training, bad data),
        each reported in one line and not retried by it.
    """
    for cell in cells:
        if experiment.is_done(*cell):
            experiment.check_finished_cell(*cell)
            if worker is None:
                print(f"skip {cell_name(cell)}: finished", flush=True)
    progress = GridProgress(total_epochs=0, workers=workers, worker=worker)
    reported = None
    failed = []
    while True:
        for cell in unfinished(experiment, cells):
            if cell not in failed and not run_cell_if_claimed(experiment, cell, cells, progress):
                failed.append(cell)
        holders = {cell: current_holder(experiment.cell_dir(*cell))
                   for cell in unfinished(experiment, cells) if cell not in failed}
        if not holders or worker is not None:
            return failed
        if not wait:
            print(f"not waiting for {_held_cells(holders)}", flush=True)
            return failed
        tokens = {cell: holder and holder.owner.get("token") for cell, holder in holders.items()}
        if tokens != reported:
            print(f"waiting for {_held_cells(holders)}", flush=True)
            reported = tokens
        time.sleep(poll)


def run_cell_if_claimed(experiment, cell, cells, progress):
    """Run ``cell`` if this process can claim it and nobody finished it meanwhile.

    Returns False when the cell failed (reported in one line), else True.
    """
    folder = experiment.cell_dir(*cell)
    before = current_holder(folder)
    claim = try_claim(folder)
    if claim is None:
        return True
    with claim:
        left = unfinished(experiment, cells)
        if cell not in left:            # finished by another process since we looked
            return True
        if before is not None and before.stale:
            print(f"{cell_name(cell)}: taking over from {before.describe()}", flush=True)
        alpha, beta, fold = cell
        progress.label = (f"[{'' if progress.worker is None else f'worker {progress.worker} '}"
                          f"cell {len(cells) - len(left) + 1}/{len(cells)} "
                          f"{row_name(alpha, beta)} fold{fold}]")
        # The estimate counts the cells other processes run, too.
        progress.total_epochs = progress.done_epochs + len(left) * experiment.profile.epochs
        started = time.perf_counter()
        try:
            experiment.run_cell(alpha, beta, fold, callbacks=[progress], claim=claim)
        except ClaimLost as lost:
            print(f"{progress.label} stopped: {lost}", flush=True)
            return True
        except (TrainingDiverged, ValueError) as error:  # DataError is a ValueError
            print(f"{progress.label} failed: {error}", flush=True)
            return False
        print(f"{progress.label} done in {time.perf_counter() - started:.0f} s", flush=True)
        return True


def _held_cells(holders):
    """'2 cells other processes hold: a0.5_b0.5/fold0 (pid 1 on host x since ...), ...'"""
    described = [f"{cell_name(cell)} ({holder.describe() if holder else 'just released'})"
                 for cell, holder in holders.items()]
    count = f"{len(holders)} cell{'s' if len(holders) > 1 else ''}"
    return f"{count} other processes hold: {', '.join(described)}"


def cpu_cores():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share_the_cores(workers):
    """Give this process's TensorFlow its share of the cores (before any op runs)."""
    import tensorflow as tf

    threads = max(1, cpu_cores() // workers)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran here (main() called in a running program)
        print(f"TensorFlow is already running in this process: it keeps its threads "
              f"(wanted {threads})", flush=True)


def start_workers(argv, workers):
    """The ``workers - 1`` helper processes: this command again, as ``--worker-of``.

    Each in its own session, so that Ctrl-C at the terminal reaches the lead alone,
    which stops them (``stopping_helpers``) and says so in one line: a helper
    interrupted while still importing would print a traceback of its own."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return [subprocess.Popen([sys.executable, "-m", "reproduce.table1", *argv, "--workers",
                              str(workers), "--worker-of", str(index), str(workers)], env=env,
                             start_new_session=True)
            for index in range(2, workers + 1)]


@contextlib.contextmanager
def stopping_helpers(workers):
    """The list the lead puts its helper processes in; they are stopped with it.

    With several workers, SIGTERM stops and reaps the helpers and exits at once
    (``_stop_helpers_and_exit``). Leaving early (an error, Ctrl-C) terminates the
    helpers still running; in every case they are reaped before this returns,
    and the previous SIGTERM handler is put back.
    """
    helpers = []
    finished = False
    if workers > 1:  # `kill` stops the helpers too
        handler = signal.signal(signal.SIGTERM, _stop_helpers_and_exit(helpers))
    try:
        yield helpers
        finished = True
    finally:
        if not finished:  # stopped early (an error, Ctrl-C): stop the helpers too
            _stop_helpers(helpers)
        for process in helpers:
            process.wait()
        if workers > 1:
            signal.signal(signal.SIGTERM, handler)


# Seconds a helper has to end after SIGTERM before it is killed: one stuck in C++ code
# (TensorFlow's import, a tf.data call) runs no Python signal handler until it returns.
HELPER_GRACE_S = 20


def _stop_helpers(helpers, grace_s=HELPER_GRACE_S):
    """Terminate the helper processes still running, and reap them all; one still running
    ``grace_s`` seconds after SIGTERM is killed, so the lead never waits on a stuck one."""
    for process in helpers:
        if process.poll() is None:
            process.terminate()
    for process in helpers:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_helpers_and_exit(helpers):
    """A SIGTERM handler for the lead: stop and reap its helpers, then exit with
    128 + the signal number at once.

    Not by raising SystemExit: raised wherever the signal lands, it can land
    inside TensorFlow's C++ (building a tf.data pipeline, say), which turns it
    into a bare TypeError and an exit code of 1. A cell left half-done is
    what ``kill -9`` leaves too: its claim names a dead process, so the next
    run on this machine takes it over at once, and training resumes from the
    cell's last finished epoch.
    """
    def handler(number, frame):
        _stop_helpers(helpers)
        exit_at_once(number, stopped_line("python -m reproduce.table1", "terminated (SIGTERM)"))
    return handler
