"""Start a multi-worker training job on this machine: one process per worker.

    python -m keras_blood.launch --workers 2 configs/dropout03.yaml [--set ...]
    python -m keras_blood.launch --workers 2 --resume latest configs/dropout03.yaml

Every argument after the launcher's own goes to ``python -m keras_blood.train``
unchanged. Each worker gets a ``TF_CONFIG`` naming all workers on free 127.0.0.1 ports
and its own index (worker 0 is the chief), exactly what a cluster manager sets on N
machines. Their output is streamed with a ``[worker-N]`` prefix; if one fails, the
others are stopped and the launcher exits with its status. The last line printed is the
chief's last line on stdout: the published version (warnings on stderr come before it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from keras_blood.config.cli import run_main
from keras_blood.errors import ConfigError

STOP_GRACE_SECONDS = 10


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _stream(pipe, prefix: str, lines: list[str] | None, lock: threading.Lock) -> None:
    """Echo a worker's pipe line by line with its prefix; keep the lines of its stdout."""
    for line in pipe:
        line = line.rstrip("\n")
        if lines is not None:
            lines.append(line)
        with lock:
            print(f"{prefix} {line}", flush=True)


def launch(workers: int, train_args: Sequence[str], pin_cores: bool = False) -> int:
    """Run ``workers`` training processes to the end; returns the exit status."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    cores = sorted(os.sched_getaffinity(0))
    if pin_cores and workers > len(cores):
        raise ConfigError(f"--pin-cores: {workers} workers but only {len(cores)} cores to pin them to")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes, outputs, threads = [], [], []
    lock = threading.Lock()
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(addresses, index), "PYTHONUNBUFFERED": "1"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "keras_blood.train", *train_args]
        if pin_cores:  # one core each: taskset-style affinity, set by the child before exec
            command = [sys.executable, "-c", _PINNED, str(cores[index]), *command]
        # stdout and stderr apart: the chief's last line is its last printed result, never
        # a warning TensorFlow writes to stderr as the process ends. Both are echoed here.
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        )
        lines: list[str] = []
        for pipe, kept in ((process.stdout, lines), (process.stderr, None)):
            thread = threading.Thread(target=_stream, args=(pipe, f"[worker-{index}]", kept, lock), daemon=True)
            thread.start()
            threads.append(thread)
        processes.append(process)
        outputs.append(lines)

    status = 0
    try:
        remaining = set(range(workers))
        while remaining:
            for index in sorted(remaining):
                code = processes[index].poll()
                if code is None:
                    continue
                remaining.discard(index)
                if code != 0 and status == 0:
                    status = code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + N
                    print(f"worker-{index} exited with status {code}; stopping the others", file=sys.stderr, flush=True)
                    _stop([processes[i] for i in remaining])
            if remaining:
                threading.Event().wait(0.2)
    except KeyboardInterrupt:
        _stop(processes)
        raise
    for thread in threads:
        thread.join(timeout=5)
    if status == 0 and outputs[0]:
        print(outputs[0][-1], flush=True)  # the chief's last line on stdout: the published version
    return status


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Runs in the child: pin to one core, then become the training command.
_PINNED = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execv(sys.argv[2], sys.argv[2:])"


def build_parser() -> argparse.ArgumentParser:
    """The launcher's own options; the rest of the command line is the train command's."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.launch",
        allow_abbrev=False,
        description="Train with N workers on this machine (MultiWorkerMirroredStrategy over 127.0.0.1). "
        "Other arguments go to python -m keras_blood.train.",
    )
    parser.add_argument("--workers", type=int, required=True, help="number of worker processes")
    parser.add_argument("--pin-cores", action="store_true", help="pin worker i to CPU core i (for measurements)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, train_args = build_parser().parse_known_args(argv)
    return launch(args.workers, train_args, args.pin_cores)


if __name__ == "__main__":
    sys.exit(run_main(main))
