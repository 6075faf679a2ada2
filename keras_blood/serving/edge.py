"""Export a model version for edge runtimes: LiteRT (``.tflite``) and ONNX (``.onnx``).

    python -m keras_blood.export_edge saved_models/dropout03/1 --format litert [--quantize int8] [--set data.root=DIR]
    python -m keras_blood.export_edge saved_models/dropout03/1 --format onnx

An edge model is the version's ``serving_default`` signature itself, converted: the same
uint8 pixels ``[N, H, W, 3]`` in (``pixels``), the same ``probabilities`` out, with the
in-graph preparation (scaling, the Kaggle cell crop, colour extraction, test-time views)
written in ops that both formats have (:mod:`keras_blood.preparation`). Files go into the
version's folder, ``<version>/edge/``:

    model.tflite       LiteRT, float32
    model_int8.tflite  LiteRT, the network in full-integer int8
    model.onnx         ONNX (opset 17), float32

The int8 network is calibrated on images drawn from the training split of the data that
the version's recorded config names (``--set data.root=DIR`` to find it); the in-graph
preparation before it keeps its exact integer and float32 arithmetic (quantizing the HSV
thresholds, the cell search or the blur would move the crop), so an int8 model sees the
pixels the SavedModel sees. A float32 model is checked against the SavedModel before it is
written; an int8 one reports its validation accuracy beside the SavedModel's. Each file
is written under a hidden temporary name and renamed, so a failure leaves none half-written
(and the next export of the version removes one that a killed export left).
Running these models needs the ``edge`` extra: ``pip install "keras-blood[edge]"``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_blood.config.loading import load_config
from keras_blood.config.paths import version_config_file
from keras_blood.data import load_data
from keras_blood.errors import ConfigError, DataError, ExportError
from keras_blood.files import out_of_space, owned_prefix, remove_stale_staging, staging
from keras_blood.serving.version import load_version

FORMATS = ("litert", "onnx")
QUANTIZATIONS = ("int8",)
EDGE_DIR = "edge"
SIGNATURE = "serving_default"
INPUT_KEY = "pixels"
OUTPUT_KEY = "probabilities"
ONNX_OPSET = 17
# A float32 edge model must give the SavedModel's probabilities to this; the converted
# models measured so far stay well inside it (docs/edge.md).
FLOAT_TOLERANCE = 1e-4
CHECK_IMAGES = 32  # seeded random pixels for that check: no data needed for float32
REPRESENTATIVE_IMAGES = 256  # calibration images for int8, from the training split
EXTRA = 'pip install "keras-blood[edge]"'
STAGING_PREFIX = ".tmp-"  # edge/.tmp-<host>-<pid>-<random>-model.onnx while written and checked


def edge_file(version: Path, fmt: str, quantize: str | None = None) -> Path:
    """Where ``export_edge`` writes (and the benchmarks read) one edge model."""
    name = {"litert": "model.tflite", "onnx": "model.onnx"}[fmt]
    if quantize:
        name = name.replace("model.", f"model_{quantize}.")
    return Path(version) / EDGE_DIR / name


# ----------------------------------------------------------------------------- running


def load_edge_model(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``.tflite`` (LiteRT) or ``.onnx`` (ONNX Runtime) file -> a function from uint8 pixels
    ``[N, H, W, 3]`` to probabilities ``[N, classes]`` (any N). ``threads``: CPU threads
    (default: the runtime's own choice)."""
    path = Path(path)
    if path.suffix == ".tflite":
        Interpreter = _require("ai_edge_litert.interpreter", "litert").Interpreter
        runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner(SIGNATURE)
        return lambda pixels: runner(**{INPUT_KEY: np.asarray(pixels, np.uint8)})[OUTPUT_KEY]
    ort = _require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run([OUTPUT_KEY], {INPUT_KEY: np.asarray(pixels, np.uint8)})[0]


def predict(model: Callable, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 ``images`` in batches; ``model`` as :func:`load_edge_model`
    returns, or a SavedModel signature wrapped to take numpy pixels."""
    return np.concatenate([np.asarray(model(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def saved_model_predictor(version) -> Callable[[np.ndarray], np.ndarray]:
    """The version's ``serving_default`` (an :class:`~keras_blood.serving.version.ExportedVersion`)
    as a numpy function like :func:`load_edge_model`'s."""
    return lambda pixels: version.serve(**{INPUT_KEY: tf.constant(pixels, tf.uint8)})[OUTPUT_KEY].numpy()


def _require(module: str, fmt: str):
    # Imported only when asked for: the edge extra's packages are optional, and heavy.
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"--format {fmt} needs {module.split('.')[0]}, which is not installed: {EXTRA}") from None


# ----------------------------------------------------------------------------- converting


def convert_litert(version: Path, representative: np.ndarray | None = None) -> bytes:
    """The version's ``serving_default`` as a LiteRT flatbuffer (builtin ops only).

    With ``representative`` (uint8 pixels), the network is quantized to full-integer int8,
    calibrated on those images: every op from its float32 input on (the cast of the
    prepared uint8 pixels, quantized exactly with scale 1) runs in int8, with float32
    probabilities out. The preparation before it (every op that input depends on) is left
    out of quantization, as it must stay exact.
    """

    def converter():
        c = tf.lite.TFLiteConverter.from_saved_model(str(version), signature_keys=[SIGNATURE])
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return c

    float_model = _converted(version, "litert", lambda: converter().convert())
    if representative is None:
        return float_model

    def samples() -> Iterator[dict[str, np.ndarray]]:
        for image in representative:
            yield {INPUT_KEY: image[None]}

    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = samples
    # Selective quantization is the debugger's feature (public, tf.lite.experimental).
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=preparation_nodes(float_model))
    with warnings.catch_warnings():  # it builds a tf.lite.Interpreter of its own, deprecated
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=quantizing, debug_dataset=samples, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


def preparation_nodes(float_model: bytes) -> list[str]:
    """Output tensor names of the ops that compute the network's input: the last
    uint8 -> float32 cast (serving's ``tf.cast(pixels, tf.float32)`` before the model) and
    every op it depends on."""
    Interpreter = _require("ai_edge_litert.interpreter", "litert").Interpreter
    interpreter = Interpreter(model_content=float_model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 (the interpreter's graph, no public accessor)
    producer = {out: op for op in ops for out in op["outputs"]}
    casts = [
        op
        for op in ops
        if op["op_name"] == "CAST"
        and tensors[op["inputs"][0]]["dtype"] == np.uint8
        and tensors[op["outputs"][0]]["dtype"] == np.float32
    ]
    if not casts:
        raise ExportError("the serving graph has no uint8 -> float32 cast before its network; cannot quantize it")
    seen: dict[int, dict] = {}
    stack = [casts[-1]]
    while stack:
        op = stack.pop()
        if op["index"] not in seen:
            seen[op["index"]] = op
            stack += [producer[t] for t in op["inputs"] if t in producer]
    return [tensors[out]["name"] for op in seen.values() for out in op["outputs"]]


def convert_onnx(version) -> bytes:
    """The version's ``serving_default`` (an :class:`~keras_blood.serving.version.ExportedVersion`)
    as an ONNX model: input ``pixels`` uint8 ``[N, H, W, 3]``, output ``probabilities``."""
    tf2onnx = _require("tf2onnx", "onnx")
    ort = _require("onnxruntime", "onnx")
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # what it cannot convert, we report
    shape = [None, *version.serve.structured_input_signature[1][INPUT_KEY].shape[1:]]
    spec = [tf.TensorSpec(shape, tf.uint8, name=INPUT_KEY)]

    def convert():
        model, _ = tf2onnx.convert.from_function(tf.function(version.serve), input_signature=spec, opset=ONNX_OPSET)
        content = model.SerializeToString()
        # tf2onnx leaves an op it cannot convert in the graph (and logs it); ONNX Runtime
        # refuses such a graph, naming the op.
        ort.InferenceSession(content, providers=["CPUExecutionProvider"])
        return content

    return _converted(version.path, "onnx", convert)


def _converted(version: Path, fmt: str, convert: Callable[[], bytes]) -> bytes:
    """``convert()``, with a graph the format cannot take reported in one line."""
    try:
        return convert()
    except Exception as exc:  # the converters raise many types; all mean "cannot convert"
        message = " ".join(str(exc).split())
        ops = _unsupported_ops(message)
        reason = f"ops {ops} that {fmt} lacks" if ops else (message[:200] or type(exc).__name__)
        raise ExportError(
            f"{version}: its serving graph does not convert to {fmt} ({reason}); versions published before "
            "edge formats existed need a new version: train its config again with this keras-blood"
        ) from None


def _unsupported_ops(message: str) -> str | None:
    for pattern in (
        r"(?:TF Select|Custom) ops: ([\w, ]+?)(?: Details|$)",
        r"No Op registered for (\w+)",
        r"Unsupported ops: (.+?\))",
    ):
        found = re.search(pattern, message)
        if found:
            return found.group(1).strip()
    return None


# ----------------------------------------------------------------------------- exporting


def representative_images(config, version, count: int) -> tuple[np.ndarray, object]:
    """``count`` training images (seeded draw) and the loaded data, whose classes and image
    size must be the version's."""
    data = load_data(config.data, config.seed)
    if data.class_names != version.class_names:
        raise DataError(f"{version.path} predicts {version.class_names} but the data has classes {data.class_names}")
    expected = tuple(version.serve.structured_input_signature[1][INPUT_KEY].shape[1:])
    if data.image_shape != expected:
        raise ConfigError(
            f"the data gives {data.image_shape} images but {version.path} takes {expected}; check data.image_size"
        )
    train = data.splits["train"].images
    picked = np.random.default_rng(config.seed).choice(len(train), min(count, len(train)), replace=False)
    return train[np.sort(picked)], data


def export_edge(
    version_dir: str | Path,
    fmt: str,
    quantize: str | None = None,
    overrides: Sequence[str] = (),
    representative: int | None = None,
) -> Path:
    """Convert the version to ``fmt`` (``quantize``: None or ``int8``, LiteRT only), check
    it, and write it to :func:`edge_file`. Returns that path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZATIONS or fmt != "litert"):
        raise ConfigError(f"--quantize {quantize!r}: only --quantize int8 with --format litert is supported")
    representative = REPRESENTATIVE_IMAGES if representative is None else representative
    if representative < 1:
        raise ConfigError(f"--representative {representative}: give at least 1 calibration image")
    version_dir = Path(version_dir)
    recorded_config = version_config_file(version_dir)
    # Before anything slow: the runtimes that convert and check this format.
    for module in ("ai_edge_litert.interpreter",) if fmt == "litert" else ("tf2onnx", "onnxruntime"):
        _require(module, fmt)

    config = load_config(recorded_config, list(overrides))
    version = load_version(version_dir)
    data = None
    if quantize:
        calibration, data = representative_images(config, version, representative)
        print(f"Calibrating int8 on {len(calibration)} images of the training split ...", flush=True)
        content = convert_litert(version_dir, calibration)
    else:
        content = convert_litert(version_dir) if fmt == "litert" else convert_onnx(version)

    target = edge_file(version_dir, fmt, quantize)
    try:
        # The staged file keeps the final name's suffix (the runtimes go by it), and its
        # prefix names this host and process: the next export_edge of the version removes
        # what a killed one left (of any format).
        try:
            target.parent.mkdir(exist_ok=True)
            target.parent.chmod(0o755)  # readable by a server running as another user, like the version
            remove_stale_staging(target.parent, STAGING_PREFIX)
            with staging(target.parent, prefix=owned_prefix(STAGING_PREFIX), suffix=f"-{target.name}") as stage:
                try:
                    stage.path.write_bytes(content)
                    stage.path.chmod(0o644)
                except OSError as exc:
                    raise ExportError(_cannot_write(target, exc)) from None
                check(version, load_edge_model(stage.path), data, quantize)
                stage.publish(target)
        except OSError as exc:
            raise ExportError(_cannot_write(target, exc)) from None
    finally:
        with contextlib.suppress(OSError):  # an edge/ folder this call made and left empty
            target.parent.rmdir()
    print(f"{fmt}{' ' + quantize if quantize else ''}: {len(content) / 1e6:.2f} MB")
    return target


def _cannot_write(target: Path, exc: OSError) -> str:
    fix = "free space on its disk" if out_of_space(exc) else "is the version folder writable?"
    return f"cannot write {target} ({exc.strerror or exc}); nothing was written: {fix}"


def check(version, edge: Callable, data, quantize: str | None) -> None:
    """A float32 model must agree with the SavedModel (FLOAT_TOLERANCE, same classes) on
    seeded random pixels; an int8 one is reported: validation accuracy of both."""
    served = saved_model_predictor(version)
    if quantize is None:
        shape = version.serve.structured_input_signature[1][INPUT_KEY].shape[1:]
        pixels = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, *shape), dtype=np.uint8)
        expected, got = served(pixels), edge(pixels)
        gap = float(np.abs(expected - got).max())
        if gap > FLOAT_TOLERANCE or (expected.argmax(1) != got.argmax(1)).any():
            raise ExportError(
                f"the converted model differs from the SavedModel (max |dp| {gap:.2e} > {FLOAT_TOLERANCE:g}); "
                "nothing written"
            )
        print(f"Checked against the SavedModel on {CHECK_IMAGES} images: max |dp| = {gap:.1e}")
        return
    split = data.splits["val"] if len(data.splits.get("val", ())) else data.splits["train"]
    accuracy = {
        name: float((predict(fn, split.images).argmax(1) == split.labels).mean())
        for name, fn in (("SavedModel", served), (quantize, edge))
    }
    print(
        f"Validation accuracy ({len(split.labels)} images): SavedModel {accuracy['SavedModel']:.4f}, "
        f"{quantize} {accuracy[quantize]:.4f} ({100 * (accuracy[quantize] - accuracy['SavedModel']):+.2f} points)"
    )
