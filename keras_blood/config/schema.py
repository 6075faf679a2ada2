"""Experiment configs: one YAML file per experiment, parsed into typed, validated objects.

A config file maps 1:1 onto :class:`Config`. Every command also takes ``--set key=value``
overrides with dotted keys (``--set train.epochs=3 --set data.root=/data``); values are
parsed as YAML, so ``3`` is an int, ``true`` a bool and ``[32, 64]`` a list.

This module imports no TensorFlow, so a bad config is reported in a fraction of a second,
before anything heavy is loaded or written.
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from keras_blood.config.presets import GEORGETOWN_PRESETS
from keras_blood.config.quote import quoted
from keras_blood.errors import DataError

DATA_ROOT_ENV = "KERAS_BLOOD_DATA_ROOT"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# ----------------------------------------------------------------------------- data


def _root_given(value: Any) -> Any:
    """data.root as given: an empty one (``--set data.root=``) would read the current folder."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(
            "the path is empty (it would read the current folder); "
            "give a folder or a .csv/.tsv list, or leave the key out"
        )
    return value


# Each source's sizes: BloodMNIST comes in four square files, each image one centred
# cell. The Kaggle images (320x240, the white cell anywhere in a field of red cells) are
# resized in tf.data to 120x160, and the 64x64 window around the white cell is cut out
# (CellCropConfig): the model sees the cell alone at more detail than a whole image at
# 24x32 gives it. The price is parameters, not time: the Georgetown models' Flatten feeds
# a 40-unit dense layer, so the basic model has several times the parameters here that it
# has on whole images at 24x32, the size of model the paper describes (the counts:
# docs/studies/georgetown.md).
BLOODMNIST_SIZES = (28, 64, 128, 224)
# A lab's own captures (image_folder) are taken whole, one cell each, at 64x64 unless the
# config says otherwise.
# Several sources in one model (data.sources) share one frame, what a server sends: the
# Kaggle frame, since its cells sit anywhere in it and need the cell crop.
DEFAULT_IMAGE_SIZE: dict[str, Any] = {
    "bloodmnist": 28,
    "blood_cell_images": (120, 160),
    "image_folder": 64,
    "sources": (120, 160),
}
DEFAULT_CELL_CROP: dict[str, Any] = {"bloodmnist": None, "blood_cell_images": {}, "image_folder": None, "sources": {}}
# The splits each source can have, known without loading it (which starts TensorFlow).
SOURCE_SPLITS: dict[str, tuple[str, ...]] = {
    "bloodmnist": ("train", "val", "test"),
    "blood_cell_images": ("train", "val", "test", "test_simple"),
    "image_folder": ("train", "val", "test"),
    "sources": ("train", "val", "test"),
}
SourceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
# A source's weight repeats its training images; past this, an epoch is one source over and over.
MAX_SOURCE_WEIGHT = 1000.0

HueValue = Annotated[int, Field(ge=0, le=179)]
Byte = Annotated[int, Field(ge=0, le=255)]
KernelSize = Annotated[int, Field(ge=0, le=31)]
Side = Annotated[int, Field(gt=0)]


class ColorConfig(_Strict):
    """Colour extraction (keras_blood/preparation/color.py): HSV thresholds on OpenCV's 8-bit scale.

    The defaults keep the purple nucleus and red/purple granules of the Kaggle images'
    white cell (hue 110-165, saturation >= 60) and drop the pale pink red cells (saturation
    mostly below 60) and the black corners of rotated images (value < 40). Kernel sizes
    are in pixels of the model's input; 0 or 1 turns a step off.
    """

    hue: tuple[HueValue, HueValue] = Field(
        default=(110, 165), description="[low, high], 0-179; low > high wraps through red."
    )
    saturation: tuple[Byte, Byte] = Field(
        default=(60, 255), description="[low, high], 0-255: how strongly coloured a kept pixel is."
    )
    value: tuple[Byte, Byte] = Field(default=(40, 255), description="[low, high], 0-255: how bright a kept pixel is.")
    open_size: KernelSize = Field(default=0, description="Opening (drops specks smaller than it).")
    dilate_size: KernelSize = Field(default=3, description="Grows the mask over the cytoplasm.")
    blur_size: KernelSize = Field(default=3, description="Gaussian blur of the result (odd).")
    blur_sigma: Annotated[float, Field(gt=0.0)] = Field(default=1.0, description="Sigma of that blur, in pixels.")
    background: Byte = Field(default=0, description="Value of the suppressed pixels.")

    @model_validator(mode="after")
    def _check(self) -> ColorConfig:
        for key in ("saturation", "value"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key} = [{low}, {high}]: low must not exceed high")
        for key in ("open_size", "dilate_size", "blur_size"):
            size = getattr(self, key)
            if size > 1 and size % 2 == 0:  # an even kernel has no centre pixel
                raise ValueError(f"{key} = {size}: must be odd (or 0 to turn the step off)")
        return self


class CellCropConfig(_Strict):
    """Centre every image on its white cell before the model sees it.

    The colour mask (data.color's HSV thresholds) is smoothed with a Gaussian (sigma an
    eighth of the window); its peak is the middle of the most strongly stained blob, the
    white cell. A square window around that peak is cut out (parts past the image's edge are
    data.color.background) and resized to ``size`` x ``size`` (antialiased bilinear, if
    the two differ), which is what the model takes. Like colour extraction it runs in
    tf.data and in the exported graph, so a server still sends whole images at
    data.image_size.
    """

    window: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.53,
        description="Side of the square window, a fraction of the image's shorter side "
        "(0.53: 64 of 120 rows, a white cell and a margin around it).",
    )
    size: Side = Field(default=64, description="Side of the square the model takes.")
    fit: Literal["fixed", "extent"] = Field(
        default="fixed",
        description="fixed: the window is `window` of the shorter side; extent: it is "
        "`extent_scale` x the square root of the stained area around the cell, so the cell fills "
        "the crop alike at any magnification (`window` then only sets how the centre is found).",
    )
    extent_scale: Annotated[float, Field(gt=0.0)] = Field(
        default=2.0, description="extent: window side / sqrt(stained pixels near the cell)."
    )
    extent_aspect: bool = Field(
        default=False,
        description="extent: give the window the stain's own aspect ratio (within 2:3 and 3:2), "
        "so a capture squeezed to another frame's shape is cut back to round cells.",
    )
    extent_max: Annotated[float, Field(ge=0.25, le=4.0)] = Field(
        default=1.0,
        description="extent: the largest window side, a multiple of the image's shorter side. Above 1, a "
        "capture cropped tight around its cell is zoomed out to the scale of the other labs' cells, the "
        "window's part past the image's edge taking `extent_fill`.",
    )
    extent_reach: Annotated[float, Field(ge=0.25, le=2.0)] = Field(
        default=0.8,
        description="extent: the stained area is counted within a square of this side (a multiple of the "
        "image's shorter side) around the cell's centre: wide enough for a cell that fills the capture, "
        "narrow enough that a second cell at the far edge of a field counts little.",
    )
    extent_fill: Literal["background", "border", "field"] = Field(
        default="background",
        description="extent: what a window takes past the image's edge: data.color.background, or the "
        "mean colour of the image's own border (a tight crop then sits on a plain field of its colour); "
        "field: as border, but black padding (a rotation's corners, a letterbox) is not field: it is left "
        "out of that mean and painted with it.",
    )

    def window_side(self, height: int, width: int) -> int:
        return max(1, round(self.window * min(height, width)))


class SourceConfig(_Strict):
    """One source of data.sources: which data, where, and how much of each epoch it gives.

    Its classes are mapped by name and data.class_aliases (ignoring case, _, - and spaces)
    onto data.classes; classes outside it are left out. Every source keeps its own
    validation and test splits.
    """

    name: Literal["bloodmnist", "blood_cell_images", "image_folder"] = Field(
        description="The source's kind, as data.name takes it."
    )
    root: Path | None = Field(default=None, description="Its data folder (or list), as data.root.")
    _root_given = field_validator("root", mode="before")(_root_given)
    image_size: Side | tuple[Side, Side] | None = Field(
        default=None,
        description="The size it is read at before it is put into the shared frame. Default: 28 for "
        "bloodmnist (the file), data.image_size (the frame) for the others.",
    )
    class_aliases: dict[str, list[str]] | None = Field(
        default=None, description="Spellings of this source only, added to data.class_aliases."
    )
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default=0.2, description="As data.val_fraction, for this source."
    )
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default=0.2, description="As data.test_fraction, for this source."
    )
    group_pattern: str | None = Field(default=None, description="As data.group_pattern, for this source.")
    skip_unreadable: bool = Field(default=False, description="As data.skip_unreadable, for this source.")
    download: bool = Field(default=True, description="As data.download, for this source.")
    max_examples: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Cap on examples per split, for quick smoke runs."
    )
    train_examples: Annotated[int, Field(gt=0)] | None = Field(
        default=None,
        description="Keep this many of its training images (a seeded draw; validation and test "
        "untouched): how a model does with a few hundred of a lab's own images.",
    )
    weight: Annotated[float, Field(gt=0.0, le=MAX_SOURCE_WEIGHT, allow_inf_nan=False)] = Field(
        default=1.0,
        description="Times each training image is seen an epoch (a fraction: that share of them, "
        f"a seeded draw), so that a small source is not drowned by a large one; at most {MAX_SOURCE_WEIGHT:g}.",
    )


class DataConfig(_Strict):
    name: Literal["bloodmnist", "blood_cell_images", "image_folder", "sources"] = Field(
        default="bloodmnist",
        description="bloodmnist, blood_cell_images (the Kaggle set), or image_folder: a lab's own "
        "images, data.root a folder of class folders (optionally under train/validation/test "
        "folders) or a .csv/.tsv list of path,label[,group][,split]. sources (set by data.sources): "
        "several of them in one model.",
    )
    sources: dict[SourceName, SourceConfig | None] | None = Field(
        default=None,
        description="Several sources in one model: {short name: source}, e.g. {kaggle: {name: "
        "blood_cell_images, root: DIR}, bloodmnist: {name: bloodmnist}}; a source set to null is left "
        "out. Needs data.classes. Each is put into one frame (data.image_size), as the serving "
        "graph puts a raw capture of that lab; validation is reported per source and the "
        "checkpoint kept is the one with the lowest mean validation loss over sources.",
    )
    root: Path | None = Field(
        default=None,
        description=f"Data folder (the TFDS builder's manual folder). Default: ${DATA_ROOT_ENV}, "
        "else the data source's own "
        "default (~/.medmnist for BloodMNIST, the cache medmnist itself uses; "
        "~/blood-cell-images/dataset2-master/images for blood_cell_images).",
    )
    image_size: Side | tuple[Side, Side] = Field(
        default=None,  # filled per source in _source_defaults
        description="Side of a square input, or [height, width]. BloodMNIST: 28, 64, 128 "
        "or 224. Default: 28 for BloodMNIST, [120, 160] for blood_cell_images.",
        validate_default=False,
    )
    classes: Annotated[list[str], Field(min_length=2)] | None = Field(
        default=None,
        description="Keep only these classes (any source), relabelled 0..k-1 in this order; "
        "names match the source's class names case-insensitively.",
    )
    class_aliases: dict[str, list[str]] | None = Field(
        default=None,
        description="Other spellings of a class, {class: [spelling, ...]}, e.g. {neutrophil: "
        "[NEU, band neutrophil]}: for image_folder, and for evaluate --data on any model. Names "
        "match ignoring case, _, - and spaces.",
    )
    group_pattern: str | None = Field(
        default=None,
        description="image_folder: a regular expression searched in each file's path; its first "
        "group names the patient, slide or source cell, whose files all go to one split.",
    )
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.2,
        description="For sources without a validation split (blood_cell_images, image_folder): "
        "the fraction of each class's source cells (groups) whose images are held out of train. "
        "image_folder: 0 draws none (a lab's few images all train; no early stopping, and the "
        "last epoch's weights are kept).",
    )
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.2,
        description="image_folder without a test folder: the fraction of each class's groups "
        "drawn for the test split (before validation is drawn from the rest); 0 draws none "
        "(no test figures: score the version on other labelled images with evaluate --data).",
    )
    folder_classes: Literal["all", "subset"] = Field(
        default="all",
        description="image_folder: all: every class of data.classes has images in data.root (the "
        "folder's other classes are left out and counted); subset: the folder holds some of "
        "data.classes and no other class (one is an error naming it), and the model keeps them "
        "all, those without images taking their head's weights from model.weights (a published "
        "version fine-tuned on a lab that has no basophils).",
    )
    skip_unreadable: bool = Field(
        default=False,
        description="Skip files that are not readable images (with a counted warning) "
        "instead of stopping with an error naming the first one.",
    )
    partial_splits: bool = Field(
        default=False,
        description="image_folder: a class may have no images in the validation or test split (too "
        "few images or groups to draw it in every split), with a warning instead of an error; it "
        "must have training images. Each lab's folder of data.sources is read so.",
    )
    max_pixels: Annotated[int, Field(ge=1)] = Field(
        default=50_000_000,  # keras_blood.preparation.limits.MAX_PIXELS (config is below preparation)
        description="The largest image (width x height, read from its header before decoding) a "
        "lab's folder may hold; a larger one is an error naming it (or, with skip_unreadable, "
        "skipped). Decoding takes tens of bytes a pixel. Also the limit of the serving_bytes signature.",
    )
    color_extraction: bool = Field(
        default=False,
        description="Georgetown colour extraction (settings in data.color), applied in "
        "tf.data and in the exported serving graph.",
    )
    color: ColorConfig = Field(
        default=ColorConfig(), description="Colour extraction's thresholds (the data.color table below)."
    )
    stain_normalize: Literal["none", "channels", "white_balance", "grey", "macenko", "reinhard"] = Field(
        default="none",
        description="After the cell crop, before colour extraction: channels standardises each "
        "image's R, G and B to one mean and spread; white_balance each to one mean, with one spread "
        "for the three (a faint channel is not stretched, the stain's saturation stays); grey "
        "standardises its luma and repeats it in all three channels (stain colour gone, shapes and "
        "texture kept); macenko finds each image's "
        "haematoxylin and eosin colours and redraws it with one reference pair (Macenko et al. 2009); "
        "reinhard moves each image's mean and spread in Reinhard's l-alpha-beta space to a reference lab's. "
        "Each makes another lab's stain and lamp look more alike; in tf.data and in the exported serving graph.",
    )
    cell_crop: CellCropConfig | None = Field(
        default=None,  # filled per source in _source_defaults
        description="Crop each image around its white cell (null: whole images). "
        "Default: on for blood_cell_images, off for BloodMNIST (already one centred cell).",
        validate_default=False,
    )
    max_examples: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Cap on examples per split, for quick smoke runs."
    )
    download: bool = Field(default=True, description="Download missing files.")
    tfds_dir: Path | None = Field(
        default=None,
        description="Where the sources are prepared (once) as TensorFlow Datasets. "
        "Default: TFDS's own, $TFDS_DATA_DIR, else ~/tensorflow_datasets.",
    )
    shuffle_buffer: Annotated[int, Field(gt=0)] = Field(
        default=20_000,
        description="Training examples tf.data shuffles among (at most the split's size); every "
        "epoch is shuffled anew.",
    )

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        if values.get("sources") is not None and "name" not in values:
            values = {**values, "name": "sources"}
        name = values.get("name", "bloodmnist")
        if name not in DEFAULT_IMAGE_SIZE:  # an unknown name is reported by its own field
            return values
        if values.get("image_size") is None:
            values = {**values, "image_size": DEFAULT_IMAGE_SIZE[name]}
        if "cell_crop" not in values:  # an explicit null turns the crop off
            values = {**values, "cell_crop": DEFAULT_CELL_CROP[name]}
        return values

    _root_given = field_validator("root", mode="before")(_root_given)

    @field_validator("image_size", mode="before")
    @classmethod
    def _size_shape(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != 2:
            raise ValueError("expected one side (a square) or [height, width]")
        return value

    @field_validator("image_size")
    @classmethod
    def _size_for_source(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("name") == "bloodmnist" and value not in BLOODMNIST_SIZES:
            raise ValueError(
                "BloodMNIST comes in square sizes 28, 64, 128 or 224 "
                "(one file each); other sizes are for data.name blood_cell_images or image_folder"
            )
        return value

    @model_validator(mode="after")
    def _sources(self) -> DataConfig:
        if self.name != "sources":
            if self.sources is not None:
                raise ValueError(f"data.sources is for data.name sources (leave data.name out), not {self.name}")
            return self
        if not self.used_sources:
            raise ValueError("data.sources: name at least one source (a short name: {name: ..., root: ...})")
        if not self.classes:
            raise ValueError("data.sources needs data.classes: the classes every source is mapped onto")
        if self.root is not None:
            raise ValueError("data.root is each source's own with data.sources: data.sources.<name>.root")
        for name in self.used_sources:
            try:
                self.source_config(name)
            except ValidationError as exc:
                error = exc.errors()[0]
                key = ".".join(str(part) for part in error["loc"])
                raise ValueError(
                    f"data.sources.{name}{'.' + key if key else ''}: {error['msg'].removeprefix('Value error, ')}"
                ) from None
        return self

    @property
    def used_sources(self) -> dict[str, SourceConfig]:
        """data.sources without those set to null."""
        return {name: source for name, source in (self.sources or {}).items() if source is not None}

    def source_config(self, name: str) -> DataConfig:
        """Source ``name`` as a data config of its own, read at its size into the shared
        tfds_dir. A lab's folder is listed with data.classes and the aliases (its other
        classes left out, as alone); the data sets keep all their classes, mapped onto
        data.classes by the caller."""
        source = self.used_sources[name]
        size = source.image_size or (
            DEFAULT_IMAGE_SIZE["bloodmnist"] if source.name == "bloodmnist" else self.image_size
        )
        keys = ("root", "val_fraction", "test_fraction", "group_pattern", "skip_unreadable", "download", "max_examples")
        folder = source.name == "image_folder"
        return DataConfig(
            name=source.name,
            image_size=size,
            cell_crop=None,
            tfds_dir=self.tfds_dir,
            max_pixels=self.max_pixels,
            classes=self.classes if folder else None,
            class_aliases=self.source_aliases(name) if folder else None,
            **{key: getattr(source, key) for key in keys},
        )

    def source_aliases(self, name: str) -> dict[str, list[str]]:
        """data.class_aliases with source ``name``'s own added."""
        own = self.used_sources[name].class_aliases or {}
        shared = self.class_aliases or {}
        return {key: [*shared.get(key, []), *own.get(key, [])] for key in {**shared, **own}}

    @model_validator(mode="after")
    def _folder_options(self) -> DataConfig:
        if self.name != "image_folder":
            if self.group_pattern is not None:
                raise ValueError(f"group_pattern is for data.name image_folder (a lab's own images), not {self.name}")
            if self.folder_classes != "all":
                raise ValueError(f"folder_classes is for data.name image_folder (a lab's own images), not {self.name}")
            for key in ("val_fraction", "test_fraction"):
                if getattr(self, key) == 0:
                    raise ValueError(
                        f"{key} = 0 (nothing held out) is for data.name image_folder (a lab's own images); "
                        f"{self.name} needs a fraction above 0"
                    )
        if self.folder_classes == "subset" and not self.classes:
            raise ValueError("folder_classes = 'subset' needs data.classes: the classes the model keeps")
        return self

    @property
    def undrawn_splits(self) -> set[str]:
        """The splits that data.val_fraction or data.test_fraction 0 leaves undrawn (image_folder):
        a run goes on without them, unless the folder gives them."""
        return {split for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)) if not fraction}

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            # Without the spaces around them: a prepared copy reads its class names back stripped.
            value = [name.strip() for name in value]
            if not all(value):
                raise ValueError("a class name is empty")
            counts = collections.Counter(name.casefold() for name in value)
            repeated = sorted({n for n in value if counts[n.casefold()] > 1})
            if repeated:
                raise ValueError(f"classes named more than once: {quoted(repeated)}")
        return value

    @property
    def height_width(self) -> tuple[int, int]:
        """The size images are decoded to: what a server sends."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]

    @property
    def model_size(self) -> tuple[int, int]:
        """The size the model takes: the cell crop's, if there is one."""
        return (self.cell_crop.size,) * 2 if self.cell_crop else self.height_width

    def check_split(self, split: str) -> None:
        """A DataError unless this source has ``split`` (said before any data is loaded)."""
        possible = SOURCE_SPLITS[self.name]
        if split not in possible:
            raise DataError(f"--split {quoted(split)}: data source {self.name!r} has splits {sorted(possible)}")

    def given_root(self) -> Path | None:
        """data.root, else $KERAS_BLOOD_DATA_ROOT; None where neither is set."""
        if self.root is not None:
            return self.root.expanduser()
        if os.environ.get(DATA_ROOT_ENV):
            return Path(os.environ[DATA_ROOT_ENV]).expanduser()
        return None

    def resolved_tfds_dir(self) -> Path:
        if self.tfds_dir is not None:
            return self.tfds_dir.expanduser()
        return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


# ----------------------------------------------------------------------------- models
#
# Each model family is one parameter class; its `name` field is the registry key that
# `keras_blood.models` maps to a builder. Families with named presets (the Georgetown
# models) fill their defaults from the preset, so `name: dropout03` alone is a full model.

Rate = Annotated[float, Field(ge=0.0, lt=1.0)]
Positive = Annotated[int, Field(gt=0)]


class _ModelParams(_Strict):
    """What every model family takes besides its own widths: where its weights start from
    and what of it trains (keras_blood.training.transfer)."""

    name: str  # each family's Literal; declared here so that it stays the first key
    weights: str = Field(
        default="none",
        description="none (random init), imagenet (vgg16 only), a keras-blood run folder, "
        "checkpoint (runs/.../checkpoints/best.weights.h5) or exported version "
        "(layers copied by name and shape, the head mapped by class name), or a Keras "
        "weights file of this very model",
    )
    fine_tune_from: str | None = Field(
        default=None,
        description="Freeze every layer before this one (names as model.summary() prints "
        "them in a fresh process, e.g. conv2d_1); null: train all.",
    )
    weights_recipe: Literal["any", "same"] = Field(
        default="any",
        description="same: model.weights must be a keras-blood model (a published version, a run) of this "
        "very recipe: the same data.classes in order, preparation (data.image_size, cell_crop, "
        "stain_normalize, color_extraction and color) and model settings; the first that differs "
        "is one line before anything is read (fine-tuned weights would otherwise see other pixels). "
        "any: layers are copied where they fit.",
    )
    imagenet_weights: ClassVar[bool] = False

    @field_validator("weights")
    @classmethod
    def _imagenet_only_where_it_exists(cls, value: str) -> str:
        if value.lower() == "imagenet" and not cls.imagenet_weights:
            raise ValueError(
                "ImageNet weights exist for vgg16 only; use none, a keras-blood run folder, "
                "checkpoint or published version, or a Keras weights file"
            )
        return value


class CNNConfig(_ModelParams):
    """Paper 000: two conv layers, each followed by pooling and dropout, then a dense head.

    The paper gives no widths; 32/64 filters and a 128-unit head are the common choice
    for 28x28 inputs.
    """

    name: Literal["cnn"]
    filters: tuple[Positive, Positive] = Field(default=(32, 64), description="Filters of the two conv layers.")
    kernel_size: Positive = Field(default=3, description="Side of the conv kernels, in pixels.")
    conv_dropout: Rate = Field(default=0.25, description="Dropout after each conv layer's pooling.")
    dense_units: Positive = Field(default=128, description="Units of the dense ReLU layer before the softmax.")
    dense_dropout: Rate = Field(default=0.5, description="Dropout after the dense layer.")


class FNNConfig(_ModelParams):
    """Paper 000's baseline: flattened pixels, one hidden ReLU layer, softmax."""

    name: Literal["fnn"]
    hidden_units: Positive = Field(default=128, description="Units of the hidden ReLU layer.")


class GeorgetownConfig(_ModelParams):
    """The Georgetown family: 3x (Conv2D + MaxPooling2D), one ReLU Dense, softmax Dense.

    Presets differ only in dropout and kernel regularisation. The paper gives no widths;
    16/32/32 filters and 40 dense units make the ~27k-parameter model it describes at
    28x28x3 inputs.
    """

    name: Literal[tuple(GEORGETOWN_PRESETS)]  # type: ignore[valid-type]
    filters: tuple[Positive, Positive, Positive] = Field(
        default=(16, 32, 32), description="Filters of the three conv layers."
    )
    kernel_size: Positive = Field(default=3, description="Side of the conv kernels, in pixels.")
    dense_units: Positive = Field(default=40, description="Units of the dense ReLU layer before the softmax.")
    conv_dropout: Rate = Field(default=0.0, description="Dropout after each conv layer's pooling (0: none).")
    dense_dropout: Rate = Field(default=0.0, description="Dropout after the dense layer (0: none).")
    l1: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="L1 (lasso) penalty on the conv and dense kernels (0: none)."
    )
    l2: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="L2 (ridge) penalty on the conv and dense kernels (0: none)."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("name") in GEORGETOWN_PRESETS:
            return {**GEORGETOWN_PRESETS[values["name"]], **values}
        return values


class VGG16Config(_ModelParams):
    """VGG16 transfer learning: keras.applications.VGG16 without its top, new head.

    ``weights``: ``imagenet`` (downloaded by Keras), ``none`` (random init), a path to
    a weights file of the VGG16 base, or a keras-blood vgg16 run (as for every model).
    ``fine_tune_from``: ``null`` keeps the base frozen; a layer name such as
    ``block5_conv1`` trains that layer and everything after it.
    """

    name: Literal["vgg16"]
    weights: str = Field(
        default="imagenet",
        description="As for every family, and imagenet: the base's ImageNet weights (downloaded by Keras).",
    )
    imagenet_weights: ClassVar[bool] = True
    min_input_size: Annotated[int, Field(ge=32)] = Field(
        default=32,
        description="Smallest side the base is built for; smaller inputs are enlarged to it inside the model.",
    )
    dense_units: Positive = Field(default=256, description="Units of the new head's dense ReLU layer.")
    dense_dropout: Rate = Field(default=0.5, description="Dropout after that layer.")


class ResNetConfig(_ModelParams):
    """A compact residual (or plain VGG-style) network with batch norm for small inputs.

    A 3x3 stem, then one stage per entry of ``widths`` at full, 1/2, 1/4 ... resolution
    (max pooling between stages, none before the first: 28x28 has no pixels to spare),
    ``blocks_per_stage`` blocks of two 3x3 conv + BN each, global average pooling,
    dropout and a softmax layer. ``upsample`` > 1 enlarges the image (bilinear) inside the
    model before the stem: every stage then works at that many times the resolution, for
    that factor squared in compute.
    """

    name: Literal["resnet"]
    widths: tuple[Positive, ...] = Field(
        default=(32, 64, 128), description="Channels of each stage; one stage per entry."
    )
    blocks_per_stage: Positive = Field(default=1, description="Blocks (two 3x3 conv + norm each) per stage.")
    residual: bool = Field(default=True, description="Skip connections around each block (false: a plain stack).")
    dropout: Rate = Field(default=0.2, description="Dropout before the softmax layer.")
    norm: Literal["batch", "group", "layer"] = Field(
        default="batch",
        description="batch: batch norm (statistics of the training set, frozen at serving); group "
        "(8 groups of channels) or layer (all channels): each image's own statistics, so that "
        "another lab's brighter or paler images are not measured against the training lab's",
    )
    upsample: Annotated[int, Field(ge=1, le=8)] = Field(
        default=1, description="Integer factor the model enlarges its input by (1: none)."
    )


MODEL_CLASSES = (CNNConfig, FNNConfig, GeorgetownConfig, VGG16Config, ResNetConfig)
ModelConfig = Annotated[
    CNNConfig | FNNConfig | GeorgetownConfig | VGG16Config | ResNetConfig,
    Field(discriminator="name"),
]

# ----------------------------------------------------------------------------- training


class AugmentConfig(_Strict):
    """Training-time augmentation, applied per batch in tf.data (vectorised).

    Blood cells have no orientation, so flips and 90-degree rotations are label-preserving;
    mild brightness / contrast / saturation jitter mimics stain and lighting variation.
    All off by default, so the paper models train as published.
    """

    flip: bool = Field(default=False, description="random left-right and up-down flips")
    rot90: bool = Field(default=False, description="0/90/180/270 (0/180 for non-square inputs)")
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="max shift as a fraction of 255"
    )
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(default=0.0, description="max factor change")
    saturation: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(default=0.0, description="max factor change")
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.0,
        description="max turn of each image's hues, as a fraction of the colour circle (0.1: 36 degrees): "
        "a stain bluer or redder than the training labs'",
    )
    channel_gain: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0, description="max factor change of each of R, G, B on its own (another stain's tint)"
    )
    stain: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0,
        description="HED jitter: max change of each image's haematoxylin, eosin and DAB amounts "
        "(factor 1 - stain to 1 + stain, shift up to stain in optical density): another lab's staining",
    )
    background_tint: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0,
        description="max shift of each of R, G, B of an image's background (its pixels above its mean "
        "brightness), as a fraction of 255: a background colour that follows the class in one lab teaches nothing",
    )
    grayscale: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="probability of turning an image grey (shape over stain colour)"
    )
    sharpen: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0,
        description="max unsharp-mask amount (image + a * (image - blurred)): sharper optics than the training set's",
    )
    blur: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0,
        description="max share of a Gaussian blur mixed in (image + a * (blurred - image), a up to this): "
        "softer optics than the training set's; with sharpen, each image gets one of the two",
    )
    scale: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        default=0.0,
        description="max zoom change about the centre (1 - scale to 1 + scale; past the edge, the "
        "image's border colour): cells a little larger or smaller than the crop makes them",
    )
    noise: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0,
        description="max standard deviation of Gaussian pixel noise, as a fraction of 255 (each image "
        "draws its own, from 0 up to this): a noisier camera than the training labs'",
    )
    jpeg: Annotated[int, Field(ge=0, le=95)] = Field(
        default=0,
        description="lowest JPEG quality each image is re-encoded at (its own, from this up to 95); "
        "0 disables: another lab's compressed captures",
    )
    mixup_alpha: Annotated[float, Field(ge=0.0)] = Field(default=0.0, description="0 disables MixUp")
    cutmix: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0,
        description="CutMix (keras.layers.CutMix's factor): a patch of another image of the batch pasted "
        "in, labels mixed by area; 0 disables",
    )

    @property
    def enabled(self) -> bool:
        return any(
            (
                self.flip,
                self.rot90,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                self.channel_gain,
                self.stain,
                self.background_tint,
                self.grayscale,
                self.sharpen,
                self.blur,
                self.scale,
                self.noise,
                self.jpeg,
                self.mixup_alpha,
                self.cutmix,
            )
        )


class EvalConfig(_Strict):
    read_test: bool = Field(
        default=True,
        description="false: the test split is drawn but not read, and the version is published without "
        "test figures; for runs that choose a recipe on validation figures (benchmarks/labs.py "
        "--leave-one-out), so the test split is read once, by the recipe reported",
    )
    tta: Literal["none", "flip", "d4"] = Field(
        default="none",
        description="test-time augmentation averaged inside the evaluated and exported model: "
        "flip (identity + horizontal flip) or d4 (the 8 flips/rotations of a square image)",
    )
    calibration: Literal["none", "temperature"] = Field(
        default="none",
        description="temperature: after training, fit one temperature T on the validation split "
        "(minimum NLL) and export softmax(log(p) / T), calibrated probabilities with the same "
        "predictions; metrics.json records T and the test ECE/Brier/NLL before and after",
    )


class TrainConfig(_Strict):
    epochs: Positive = Field(default=30, description="Most epochs (early stopping may end sooner).")
    batch_size: Positive = Field(
        default=128, description="Examples per training step, all replicas together (each gets an equal share)."
    )
    learning_rate: Annotated[float, Field(gt=0.0)] = Field(
        default=1e-3, description="The rate (with schedule cosine: its peak)."
    )
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(
        default="adam", description="The Keras optimizer; sgd with Nesterov momentum 0.9."
    )
    weight_decay: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="The optimizer's decoupled weight decay (0: none)."
    )
    schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="constant: learning_rate throughout; cosine: warm-up, then cosine decay to 0 at the last step.",
    )
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(
        default=0, description="cosine: epochs of linear warm-up from 0 to learning_rate."
    )
    class_weight: Literal["none", "balanced"] = Field(
        default="none",
        description="balanced: each class's loss weighted by n / (classes x its training images, after "
        "source weights), so that a class few sources have is not drowned (Keras's fit(class_weight=...))",
    )
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0, description="Of the cross-entropy loss's one-hot targets (0: none)."
    )
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        default=8, description="Epochs without val_loss improvement before stopping; 0 disables."
    )
    jit_compile: bool = Field(default=False, description="XLA; slower on small CPUs, opt in.")
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = Field(
        default="auto",
        description="auto: MultiWorkerMirrored when TF_CONFIG is set, Mirrored on >1 GPU, else the default strategy.",
    )
    deterministic: bool = Field(default=False, description="TF op determinism (slower).")
    mixed_precision: bool = Field(
        default=False, description="mixed_bfloat16 compute (fast on GPUs and CPUs with bf16 units)"
    )
    ensemble: Positive = Field(
        default=1,
        description="models trained one after another, each with the whole schedule and its own "
        "seed (train.member_seeds); their probabilities are averaged inside the evaluated and "
        "exported model",
    )
    transfer_schedule: Literal["none", "two_stage"] = Field(
        default="none",
        description="two_stage (with model.weights): first head_epochs epochs train only the "
        "head and the layers model.weights gave nothing, then the model from "
        "model.fine_tune_from on at learning_rate * fine_tune_lr_factor, each stage with its "
        "own optimizer and train.schedule over its own epochs",
    )
    head_epochs: Positive = Field(default=3, description="two_stage: epochs of the first stage")
    fine_tune_lr_factor: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.1, description="two_stage: the second stage's learning rate, a fraction of learning_rate"
    )


def _folder_name(value: str) -> str:
    # A folder under output.runs_dir or output.publish_dir: no separators, and no leading
    # "." or "-" (so neither "." nor ".." nor a hidden folder nor an option-like name).
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", value):
        raise ValueError(
            "must be a folder name: at most 100 letters, digits, '_', '.' or '-', "
            "starting with a letter, a digit or '_'"
        )
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]


class OutputConfig(_Strict):
    runs_dir: Path = Field(default=Path("runs"), description="Run folders go to runs_dir/<config name>/<timestamp>/.")
    publish_dir: Path = Field(
        default=Path("saved_models"),
        description="Where versions are published: publish_dir/<name>/<n>/, TensorFlow Serving's layout "
        "(output.export_dir is its deprecated spelling).",
    )
    name: FolderName | None = Field(
        default=None,
        description="The served model's name: versions go to publish_dir/<name>/<n>/. Default: the "
        "config's name, plus -<data.name> when --set changes the config file's data source.",
    )
    publish: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: publish a version unless data.max_examples is set (a smoke run); "
        "never: what train --no-publish sets.",
    )
    publish_if_better: bool = Field(
        default=False,
        description="Publish only when the test accuracy beats the newest version's "
        "(evaluated on the same split and number of examples).",
    )


class Config(_Strict):
    name: FolderName = Field(
        description="The experiment's name: its runs go to output.runs_dir/<name>/. Default: the config "
        "file's name without .yaml."
    )
    # keras.utils.set_random_seed (NumPy's legacy seeding) takes 0 <= seed < 2**32.
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        default=42, description="Seeds the splits drawn, the weights, the shuffling and the augmentation."
    )
    data: DataConfig = DataConfig()
    model: ModelConfig
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _what_needs_a_held_out_split(self) -> Config:
        undrawn = self.data.undrawn_splits
        if "val" in undrawn and self.train.early_stopping_patience:
            raise ValueError(
                f"train.early_stopping_patience = {self.train.early_stopping_patience} watches the validation "
                "loss, and data.val_fraction = 0 draws no validation split; set train.early_stopping_patience=0 "
                "(the last epoch's weights are kept)"
            )
        if "val" in undrawn and self.eval.calibration != "none":
            raise ValueError(
                "eval.calibration fits its temperature on the validation split, and data.val_fraction = 0 "
                "draws none; set eval.calibration=none"
            )
        if not self.eval.read_test and self.output.publish_if_better:
            raise ValueError(
                "output.publish_if_better compares test accuracies, and eval.read_test = false reads no "
                "test split; drop publish_if_better (or set eval.read_test=true)"
            )
        if "test" in undrawn and self.output.publish_if_better:
            raise ValueError(
                "output.publish_if_better compares test accuracies, and data.test_fraction = 0 draws no "
                "test split; drop publish_if_better (or hold a test split out)"
            )
        return self

    @model_validator(mode="after")
    def _two_stage_needs_a_start(self) -> Config:
        train, model = self.train, self.model
        if train.transfer_schedule != "two_stage":
            return self
        if model.weights.lower() == "none":
            raise ValueError(
                "train.transfer_schedule = 'two_stage' trains the head first on weights from "
                "elsewhere, and model.weights is none; set model.weights or drop the schedule"
            )
        if train.head_epochs >= train.epochs:
            raise ValueError(
                f"train.head_epochs = {train.head_epochs} leaves no epoch of train.epochs = "
                f"{train.epochs} for the second stage; use fewer head_epochs or more epochs"
            )
        if model.name == "vgg16" and model.fine_tune_from is None:
            raise ValueError(
                "train.transfer_schedule = 'two_stage' with a frozen VGG16 base (model.fine_tune_from "
                "null) unfreezes nothing; set model.fine_tune_from, e.g. block5_conv1"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def selection_key(self) -> str:
        """The validation figure that picks the checkpoint kept and early stopping's epoch
        (lowest wins): with data.sources the mean of the sources' validation losses, so that
        a large source does not outvote a small one."""
        return "val_sources_loss" if self.data.name == "sources" else "val_loss"

    @property
    def served_name(self) -> str:
        """The folder under output.publish_dir that versions of this model go to."""
        return self.output.name or self.name
