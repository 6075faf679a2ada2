"""What a run trained on, as its run folder records it, so that ``--resume`` continues on
the same split or says why it cannot.

A lab's folder (an image_folder source, alone or in ``data.sources``) is split by drawing:
images added or removed draw every split again, and files the run trained on would land in
validation or test. Its record is each file's class and split (the rows, and a digest of
them) and the files' fingerprint (sizes and times). A published data set (bloodmnist,
blood_cell_images) comes with its split; its record is the fingerprint of the files its
prepared copy is made from. No TensorFlow for a lab's folder: the check is made before the
data is read or prepared again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from keras_blood.config.schema import DataConfig
from keras_blood.data.sources.image_folder.listing import fingerprint, source_config_of, source_listing


def split_record(config: DataConfig, seed: int) -> dict[str, dict[str, Any]]:
    """``{where: record}`` for each source of ``config``: ``data`` for a single source,
    ``data.sources.<name>`` for each of several."""
    if config.name == "sources":
        return {f"data.sources.{name}": _record(source_config_of(config, name), seed) for name in config.used_sources}
    return {"data": _record(config, seed)}


def _record(config: DataConfig, seed: int) -> dict[str, Any]:
    root = config.given_root()
    if config.name == "image_folder":
        listing = source_listing(config, seed)
        rows = [
            [file, listing.class_names[label], split]
            for file, label, split in zip(listing.files.tolist(), listing.labels.tolist(), listing.splits.tolist())
        ]
        return {
            "data": "image_folder",
            "root": str(root.resolve()),
            "classes": listing.class_names,
            "split": hashlib.sha1(json.dumps(rows).encode()).hexdigest(),
            "files": fingerprint(root, listing),
            "rows": rows,
        }
    return {
        "data": config.name,
        "root": str(root) if root else None,
        "source_fingerprint": _published_fingerprint(config),
    }


def _published_fingerprint(config: DataConfig) -> str | None:
    """The fingerprint the data set's prepared copy records of its files, taken from the
    files as the loader finds them; None where they are not at hand (a copy used as it is)."""
    if config.name == "bloodmnist":
        from keras_blood.data.sources.bloodmnist.builder import file_name, source_fingerprint
        from keras_blood.data.sources.bloodmnist.loader import DEFAULT_ROOT

        path = (config.given_root() or DEFAULT_ROOT.expanduser()) / file_name(config.image_size)
        return source_fingerprint(path) if path.is_file() else None
    if config.name == "blood_cell_images":
        from keras_blood.data.sources.blood_cell_images.builder import source_fingerprint
        from keras_blood.data.sources.blood_cell_images.loader import DEFAULT_ROOT

        root = config.given_root() or DEFAULT_ROOT.expanduser()
        return source_fingerprint(root) if (root / "TRAIN").is_dir() else None
    return None


def split_changes(
    recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
) -> tuple[str | None, list[str]]:
    """``(refusal, warnings)`` for a run that recorded ``recorded`` and finds ``current``:
    refusal, one line naming the first source whose split would not be the one it trained on
    (files added or removed, in another class or split); warnings, one line each for a
    source whose files were rewritten with the same split, or a published set's files changed."""
    warnings = []
    for where, then in recorded.items():
        now = current.get(where)
        if now is None:
            continue
        if "rows" in then:
            if then["split"] != now["split"] or then["classes"] != now["classes"]:
                return (
                    f"{_prefix(where)}{then['root']} changed since the run started ({_what_changed(then, now)})",
                    warnings,
                )
            if then["files"] != now["files"]:
                warnings.append(
                    f"warning: {_prefix(where)}{then['root']}: files were written since the run started (the same "
                    "files, classes and splits); resuming on them as they are now"
                )
        elif (
            then.get("source_fingerprint")
            and now.get("source_fingerprint")
            and then["source_fingerprint"] != now["source_fingerprint"]
        ):
            warnings.append(
                f"warning: {_prefix(where)}the files of {then['data']} "
                f"in {then['root'] or 'its default folder'} changed "
                "since the run started; resuming on them as they are now"
            )
    return None, warnings


def _prefix(where: str) -> str:
    return "" if where == "data" else f"{where}: "


def _what_changed(then: dict[str, Any], now: dict[str, Any]) -> str:
    """``8 files added, 0 removed, 21 in another split, 9 of them from train to validation
    or test; class 'x' added``: how a folder changed, in a few words."""
    before = {file: (name, split) for file, name, split in then["rows"]}
    after = {file: (name, split) for file, name, split in now["rows"]}
    kept = before.keys() & after.keys()
    moved = [file for file in kept if before[file][1] != after[file][1]]
    trained_on = sum(before[file][1] == "train" for file in moved)
    relabelled = sum(before[file][0] != after[file][0] for file in kept)
    parts = [
        f"{len(after.keys() - before.keys())} files added, {len(before.keys() - after.keys())} removed, "
        f"{len(moved)} in another split"
    ]
    if trained_on:
        parts[0] += f", {trained_on} of them from train to validation or test"
    if relabelled:
        parts.append(f"{relabelled} in another class")
    text = ", ".join(parts)
    added = [name for name in now["classes"] if name not in then["classes"]]
    gone = [name for name in then["classes"] if name not in now["classes"]]
    for names, how in ((added, "added"), (gone, "gone")):
        if names:
            text += (
                "; "
                + ", ".join(f"class {name!r}" for name in names[:3])
                + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                + f" {how}"
            )
    return text
