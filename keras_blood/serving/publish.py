"""Publishing a version: whether to, where, and how, so that a crash leaves no partial
version and an earlier one is never overwritten.

A version is staged in a hidden folder beside the others (``.export-<host>-<pid>-<random>``)
and renamed to the next free number (TF Serving serves the highest). It is only published
under a name whose newest version has the same signature (input shape, dtype, class names
in order): clients of that name keep working. Smoke runs (``data.max_examples``) publish
nothing unless ``output.publish`` is ``always``; ``output.publish_if_better`` publishes
only a model that beats the newest version.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from keras_blood.config.paths import EXTRA
from keras_blood.config.schema import Config
from keras_blood.errors import ExportError
from keras_blood.files import Stage, make_folders, out_of_space
from keras_blood.serving.version import RUN_RECORD, Signature, existing_versions, read_signature

STAGING_PREFIX = ".export-"


class NotPublished(Exception):
    """Publishing was declined, which is not an error; the message says why, in one line."""


def served_folder(config: Config) -> Path:
    """The served name's folder: ``output.publish_dir/<output.name>``."""
    return config.output.publish_dir / config.served_name


def skip_reason(config: Config) -> str | None:
    """Why a run of ``config`` publishes no version (``output.publish``), or None."""
    publish = config.output.publish
    if publish == "never":
        return "output.publish is never (--no-publish)"
    if publish == "auto" and config.data.max_examples is not None:
        return (
            f"a smoke run (data.max_examples={config.data.max_examples}) is not published; "
            "--set output.publish=always to publish it"
        )
    return None


def should_publish(config: Config) -> bool:
    return skip_reason(config) is None


def check_signature(config: Config, signature: Signature) -> None:
    """Refuse a model whose signature differs from that of the newest published version."""
    base = served_folder(config)
    versions = existing_versions(base)
    if not versions:
        return
    published = read_signature(base / str(versions[-1]))
    if published != signature:
        name = config.served_name
        other = f"{name}-{config.data.name}" if not name.endswith(config.data.name) else f"{name}-2"
        raise ExportError(
            f"output.name {name!r}: version {versions[-1]} serves {published}, this model takes "
            f"{signature}; its clients would break. Publish it under another name: "
            f"--set output.name={other}"
        )


def check_publish_target(config: Config, class_names: list[str], input_shape: tuple[int, ...]) -> None:
    """Before training: can a version of this model be published? (Nothing to check
    when the run will not publish.) output.publish_dir must be writable and the served
    name's versions must have this model's signature; publishing checks the latter again."""
    if not should_publish(config):
        return
    base = served_folder(config)
    folder = base if base.is_dir() else config.output.publish_dir
    try:
        make_folders(folder)  # 0755 under any umask: a server running as another user reads versions
        with tempfile.NamedTemporaryFile(prefix=".write-test-", dir=folder):
            pass
    except OSError as exc:
        fix = "free space there or " if out_of_space(exc) else ""
        raise ExportError(
            f"output.publish_dir {str(config.output.publish_dir)!r}: cannot write to {str(folder)!r} "
            f"({exc.strerror or exc}); {fix}--set output.publish_dir=<a writable folder>"
        ) from None
    check_signature(config, Signature(tuple(input_shape), "uint8", tuple(class_names)))


def not_better_reason(config: Config, metrics: dict[str, Any]) -> str | None:
    """With ``output.publish_if_better``: why this model is not published (its test
    accuracy does not beat the newest version's), or None. Figures are compared only
    when both were evaluated on the same split and number of examples."""
    base = served_folder(config)
    versions = existing_versions(base)
    if not config.output.publish_if_better or not versions:
        return None
    newest = versions[-1]
    try:
        published = json.loads((base / str(newest) / EXTRA / "metrics.json").read_text())
    except (OSError, ValueError):
        published = {}
    keys = ("split", "num_examples")
    theirs, ours = ({k: m.get(k) for k in keys} for m in (published, metrics))
    if theirs != ours or None in ours.values() or "accuracy" not in published or "accuracy" not in metrics:
        print(
            f"output.publish_if_better: version {newest} was evaluated on {theirs}, this model on "
            f"{ours}; publishing without comparing accuracies",
            flush=True,
        )
        return None
    if metrics["accuracy"] > published["accuracy"]:
        return None
    return (
        f"test accuracy {metrics['accuracy']:.4f} does not beat version {newest}'s "
        f"{published['accuracy']:.4f} (output.publish_if_better)"
    )


def find_run_version(config: Config, run: Path) -> Path | None:
    """The version that the run folder ``run`` published, if it published one."""
    base = served_folder(config)
    for number in reversed(existing_versions(base)):
        try:
            record = json.loads((base / str(number) / EXTRA / RUN_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if record.get("run_dir") == str(Path(run).resolve()):
            return base / str(number)
    return None


def publish_version(stage: Stage, config: Config, signature: Signature) -> Path:
    """Rename the staged version to the next free version number (atomic on one filesystem)."""
    base = stage.path.parent
    for _ in range(100):
        # Again, just before the rename: another run may have published meanwhile.
        check_signature(config, signature)
        version = base / str(max(existing_versions(base), default=0) + 1)
        if version.exists():  # rename() would replace an empty folder; never reuse a number
            continue
        try:
            return stage.publish(version)
        except OSError:  # another process published this number first; take the next
            continue
    raise ExportError(f"could not publish a new version under {base}")
