"""Benchmark: what a second worker buys, and what its all-reduce costs (not part of the tests).

    python benchmarks/multi_worker.py [--set model.upsample=2 ...] [--steps 30]

Trains best.yaml's network (built and compiled by keras_blood.training.task.build and compile_for_training, with
the multi-worker fit workaround) on random 28x28 batches at the global batch of
train.batch_size, each process pinned to one CPU core:

1. one process (the default strategy), the whole global batch a step, on all cores and
   pinned to one;
2. two workers on 127.0.0.1 (MultiWorkerMirroredStrategy through keras_blood.launch's
   TF_CONFIG), half the batch each, the gradients all-reduced every step;
3. in the same two workers, the all-reduce alone: a tensor the size of the model's
   weights (float32), summed across both, timed over --steps repetitions.

It prints step time (median over the timed steps) and images/s for 1 and 2 workers, and
the all-reduce's milliseconds and effective bandwidth: the figures behind the README's
estimate of how many machines a long run needs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def measure(overrides: list[str], steps: int, warmup: int) -> dict:
    """Runs in each process: step times of fit, then the all-reduce alone."""
    import tensorflow as tf

    from keras_blood.training.runtime import cluster_from_env, select_strategy

    cluster = cluster_from_env()
    strategy = select_strategy("auto", cluster)  # before anything touches the devices
    import keras
    import numpy as np

    from keras_blood.config.loading import load_config
    from keras_blood.training.distribute import make_fit_work
    from keras_blood.training.task import build, compile_for_training

    config = load_config(REPO / "configs" / "best.yaml", overrides)
    batch = config.train.batch_size
    keras.utils.set_random_seed(0)
    model = build(config, (28, 28, 3), 8, strategy)
    compile_for_training(model, config, 8, steps_per_epoch=100, strategy=strategy)
    model = make_fit_work(model, strategy)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * 4, 28, 28, 3)).astype("float32")
    y = np.eye(8, dtype="float32")[rng.integers(0, 8, batch * 4)]
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)

    times: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[StepTimer()])
    step = statistics.median(times[warmup:])
    result = {
        "workers": strategy.num_replicas_in_sync,
        "params": model.count_params(),
        "step_s": step,
        "images_per_s": batch / step,
    }
    if cluster is not None:
        size = model.count_params()

        def ones():
            return tf.ones([size])

        reduce = tf.function(lambda: strategy.reduce("SUM", strategy.run(ones), axis=None), autograph=False)
        for _ in range(warmup):
            reduce()
        reductions = []
        for _ in range(steps):
            start = time.perf_counter()
            reduce().numpy()
            reductions.append(time.perf_counter() - start)
        result["allreduce_s"] = statistics.median(reductions)
        result["allreduce_mb"] = size * 4 / 1e6
    return result


def run_pinned(workers: int, overrides: list[str], steps: int, warmup: int, pin: bool = True) -> list[dict]:
    from keras_blood.launch import free_ports, tf_config

    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for index in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if workers > 1:
            env["TF_CONFIG"] = tf_config(addresses, index)
        command = [sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup)]
        command += [item for o in overrides for item in ("--set", o)]
        pinned = f"import os, sys; os.sched_setaffinity(0, {{{cores[index]}}}); os.execv(sys.argv[1], sys.argv[1:])"
        command = [sys.executable, "-c", pinned, *command] if pin else command
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a worker failed (status {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.overrides, args.steps, args.warmup)))
        return
    (whole,) = run_pinned(1, args.overrides, args.steps, args.warmup, pin=False)
    (one,) = run_pinned(1, args.overrides, args.steps, args.warmup)
    two = run_pinned(2, args.overrides, args.steps, args.warmup)
    step2 = max(r["step_s"] for r in two)
    reduce_s = max(r["allreduce_s"] for r in two)
    print(f"network: best.yaml {' '.join(args.overrides)} ({one['params']:,} params), global batch from the config")
    print(
        f"1 process ({len(os.sched_getaffinity(0))} cores):      step {whole['step_s'] * 1e3:7.1f} ms  "
        f"{whole['images_per_s']:7.0f} images/s"
    )
    print(f"1 worker  (1 core):        step {one['step_s'] * 1e3:7.1f} ms  {one['images_per_s']:7.0f} images/s")
    print(
        f"2 workers (1 core each):   step {step2 * 1e3:7.1f} ms  {two[0]['images_per_s']:7.0f} images/s  "
        f"(speed-up {one['step_s'] / step2:.2f}x)"
    )
    print(
        f"all-reduce of {two[0]['allreduce_mb']:.2f} MB (the weights' size, float32) over 127.0.0.1: "
        f"{reduce_s * 1e3:.2f} ms = {100 * reduce_s / step2:.1f}% of a 2-worker step"
    )


if __name__ == "__main__":
    main()
