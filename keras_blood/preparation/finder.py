"""The white-cell finder: a box for every white cell in a blood-smear field, from the stain,
at any magnification, in TensorFlow ops (so that it can run inside a served model).

One field at a time (:func:`find_cells_tf` maps it over a batch):

1. Scale. The red cells set it: they are darker than the background (Otsu's threshold on
   grey, on a copy averaged down to ``COARSE_SIDE``), and the autocorrelation of that dark
   mask falls to one half at ``acf_ratio`` x their diameter. The field is resized so that a
   red cell is ``red_cell_pixels`` across; every length below is in red-cell diameters, so
   the same parameters hold for BCCD's fields and bionet's, whose red cells are 100 and 55
   pixels across.
2. Stain. :func:`keras_blood.preparation.color.color_mask` (the Georgetown HSV thresholds,
   here stricter than the classifier's: the nucleus, not the pale red cells of a yellow or
   blue background) gives the stained pixels, smoothed by a Gaussian of ``smoothing``.
3. Cells. Local maxima of that density are candidates; a weaker one joins a stronger one
   closer than ``merge_distance`` (the lobes of one neutrophil), or closer than
   ``join_distance`` where the density between them never falls below ``saddle`` x the
   weaker peak (an eosinophil's granules beside its nucleus). Two nuclei with unstained
   cytoplasm between them stay two cells.
4. Boxes. Each cell takes the stain nearer its peak than any other cell's, within
   ``reach``, where the density is at least ``blob_level`` x its peak; the extent of that
   stain (``trim`` of it left out at either end) grown by ``margin`` is the box, round at
   least ``roundness``. A cell whose stain covers less than ``min_area`` red-cell areas
   (a platelet, a speck) or ``min_share`` of the field's largest cell's is dropped.

The parameters were chosen on BCCD's train and val fields and the bionet fields; the
figures and the command are in docs/counting.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_blood.config.schema import ColorConfig
from keras_blood.errors import ConfigError, DataError
from keras_blood.preparation.color import color_mask, gaussian_kernel


@dataclass(frozen=True)
class CellBox:
    """One white cell: pixel corners of the field (``xmax``/``ymax`` inclusive, as BCCD's boxes)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    edge: bool
    score: float


def _finder_colors() -> ColorConfig:
    # Hue 115-160 and saturation >= 80: the nucleus and granules in BCCD's and bionet's
    # fields, not the red cells that a yellow or blue background tints purple or blue.
    return ColorConfig(hue=(115, 160), saturation=(80, 255), dilate_size=0)


@dataclass(frozen=True)
class FinderConfig:
    """The finder's parameters (the module's docstring says how each is used). Lengths and
    areas are in red-cell diameters, measured on each field."""

    # The stain: color_mask's HSV thresholds, opening and dilation (not its blur or background).
    color: ColorConfig = dataclasses.field(default_factory=_finder_colors)
    red_cell_pixels: int = 16  # a red cell's diameter on the working scale, in pixels
    acf_ratio: float = 0.19  # the dark mask's autocorrelation half-width / the red cells' diameter
    smoothing: float = 0.3  # sigma of the stain's Gaussian density
    min_peak: float = 0.15  # the density a candidate peak must reach (0-1)
    merge_distance: float = 1.0  # peaks closer than this are one cell
    join_distance: float = 2.5  # ... and up to this, where the density between them holds up
    saddle: float = 0.5  # ... at this fraction of the weaker peak
    reach: float = 1.2  # a cell's stain lies within this of its peak
    blob_level: float = 0.2  # ... where the density is at least this fraction of its peak
    trim: float = 0.02  # share of a cell's stain left out at each end of its extent
    margin: float = 0.25  # the box grows by this fraction of the stain's extent on each side
    roundness: float = 0.8  # each side of a box is at least this fraction of the longer one
    min_area: float = 0.1  # a cell's stain covers at least this many red-cell areas (diameter squared)
    min_share: float = 0.3  # ... and this share of the field's largest cell's stain
    max_cells: int = 16  # slots a field in find_cells_tf

    def __post_init__(self):
        if self.red_cell_pixels < 4 or self.max_cells < 1:
            raise ConfigError(
                f"finder red_cell_pixels={self.red_cell_pixels}, max_cells={self.max_cells}: "
                "red_cell_pixels must be at least 4 and max_cells at least 1"
            )
        for name in ("acf_ratio", "smoothing", "merge_distance", "join_distance", "reach"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"finder {name}={getattr(self, name)}: must be above 0")


class FoundCells(NamedTuple):
    """:func:`find_cells_tf`'s answer for ``N`` fields, ``K = max_cells`` slots each."""

    boxes: tf.Tensor  # int32 [N, K, 4]: xmin, ymin, xmax, ymax in the field's pixels (inclusive)
    valid: tf.Tensor  # bool [N, K]: the slot holds a cell (valid slots come first)
    edge: tf.Tensor  # bool [N, K]: the box touches the field's border
    scores: tf.Tensor  # float32 [N, K]: peak stain density, highest first


# The red cells' size is measured on the field brought to this shorter side (averaging pixels),
# from the autocorrelation of its dark pixels up to this many pixels apart.
COARSE_SIDE = 240
MAX_LAG = 80


def red_cell_diameter(field: tf.Tensor, acf_ratio: float) -> tf.Tensor:
    """float32 scalar: the red cells' diameter in pixels of uint8 RGB ``field`` [H, W, 3]."""
    coarse, factor = _coarse(field)
    return _diameter(coarse, acf_ratio) * factor


def _coarse(field: tf.Tensor):
    """float32 [h, w, 3]: ``field`` averaged down to COARSE_SIDE on its shorter side (as
    it is, if smaller), and the factor it shrank by."""
    shape = tf.shape(field)
    factor = tf.maximum(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) / COARSE_SIDE, 1.0)
    size = tf.cast(tf.round(tf.cast(shape[:2], tf.float32) / factor), tf.int32)
    return tf.image.resize(tf.cast(field, tf.float32), size, method="area"), factor


def _diameter(coarse: tf.Tensor, acf_ratio: float) -> tf.Tensor:
    """The red cells' diameter in pixels of float RGB ``coarse`` [h, w, 3].

    Cells are darker than the background (Otsu's threshold on grey). The autocorrelation of
    that dark mask along rows and columns falls to one half at a lag of ``acf_ratio`` x the
    cells' diameter, whatever their number, crowding or central pallor.
    """
    grey = tf.image.rgb_to_grayscale(coarse)[..., 0]
    dark = tf.cast(grey <= _otsu_threshold(grey), tf.float32)
    dark -= tf.reduce_mean(dark)
    acf = (_autocorrelation(dark) + _autocorrelation(tf.transpose(dark))) / 2
    acf /= tf.maximum(acf[0], 1e-6)
    below = acf < 0.5
    lag = tf.cast(tf.argmax(below), tf.int32)  # the first lag below one half (0 if none)
    lag = tf.where(tf.reduce_any(below), lag, MAX_LAG)
    before = tf.gather(acf, tf.maximum(lag - 1, 0))
    after = tf.gather(acf, lag)
    crossing = tf.cast(lag - 1, tf.float32) + tf.math.divide_no_nan(before - 0.5, before - after)
    return tf.maximum(crossing, 0.5) / acf_ratio


def _autocorrelation(plane: tf.Tensor) -> tf.Tensor:
    """float32 [MAX_LAG + 1]: the mean product of ``plane``'s values ``lag`` columns apart."""
    width = tf.shape(plane)[1]
    spectrum = tf.signal.rfft(plane, fft_length=[2 * width])
    products = tf.signal.irfft(spectrum * tf.math.conj(spectrum), fft_length=[2 * width])
    products = tf.reduce_sum(products[:, : MAX_LAG + 1], axis=0)
    products = tf.pad(products, [[0, MAX_LAG + 1 - tf.shape(products)[0]]])  # a field narrower than MAX_LAG
    pairs = tf.cast(tf.shape(plane)[0] * (width - tf.range(MAX_LAG + 1)), tf.float32)
    return products / tf.maximum(pairs, 1.0)


def _otsu_threshold(grey: tf.Tensor) -> tf.Tensor:
    """Otsu's threshold of float grey levels 0-255: the level that best splits their histogram in two."""
    levels = tf.cast(tf.clip_by_value(tf.round(grey), 0, 255), tf.int32)
    hist = tf.cast(tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256), tf.float32)
    share = hist / tf.reduce_sum(hist)
    below = tf.cumsum(share)
    mean_below = tf.cumsum(share * tf.range(256, dtype=tf.float32))
    between = tf.math.divide_no_nan(tf.square(mean_below[-1] * below - mean_below), below * (1.0 - below))
    return tf.cast(tf.argmax(between), tf.float32)


def _find_one(field: tf.Tensor, config: FinderConfig):
    """One field [H, W, 3] -> boxes [K, 4] int32, valid [K], edge [K], scores [K]."""
    shape = tf.shape(field)
    height, width = shape[0], shape[1]
    cells = config.max_cells
    unit = float(config.red_cell_pixels)  # a red cell's diameter on the working scale
    coarse, factor = _coarse(field)
    zoom = unit / tf.maximum(_diameter(coarse, config.acf_ratio) * factor, 1.0)
    size = tf.maximum(tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * zoom), tf.int32), 8)
    # Resized from the coarse copy where that has the pixels (a field at 100x), else from the field.
    work = tf.cond(
        tf.reduce_all(size <= tf.shape(coarse)[:2]),
        lambda: tf.image.resize(coarse, size, method="bilinear", antialias=True),
        lambda: tf.image.resize(tf.cast(field, tf.float32), size, method="bilinear", antialias=True),
    )
    work = tf.cast(tf.clip_by_value(tf.round(work), 0, 255), tf.uint8)
    stain = tf.cast(color_mask(work[None], config.color), tf.float32)[..., None]  # [1, h, w, 1]

    # Zero-padded: the world past the edge holds no stain, so a cut cell weighs less.
    density = _blur(stain, config.smoothing * unit)[0, :, :, 0]  # [h, w]

    # Candidate peaks: local maxima over min_peak, the strongest 2 x max_cells (some are
    # merged or dropped below).
    peak = tf.equal(density, tf.nn.max_pool2d(density[None, :, :, None], 3, 1, "SAME")[0, :, :, 0])
    candidates = tf.where(peak & (density >= config.min_peak), density, 0.0)
    work_width = size[1]
    values, flat = tf.math.top_k(tf.reshape(candidates, [-1]), k=tf.minimum(2 * cells, tf.size(candidates)))
    found = values > 0
    points = tf.cast(tf.stack([flat // work_width, flat % work_width], axis=1), tf.float32)  # [C, 2] row, col

    # One cell per group of peaks: a weaker peak joins a stronger one within merge_distance,
    # or within join_distance when the density between them stays above `saddle` x the weaker
    # one (sampled at 17 points along the way).
    offsets = points[:, None, :] - points[None, :, :]
    distance = tf.norm(offsets, axis=-1)
    steps = tf.linspace(0.0, 1.0, 17)
    along = points[None, :, None, :] + offsets[:, :, None, :] * steps[None, None, :, None]  # j -> i
    along = tf.cast(tf.round(along), tf.int32)
    lowest = tf.reduce_min(tf.gather_nd(density, along), axis=-1)  # [C, C]
    weaker = tf.minimum(values[:, None], values[None, :])
    same = (distance <= config.merge_distance * unit) | (
        (distance <= config.join_distance * unit) & (lowest >= config.saddle * weaker)
    )
    kept = _greedy_keep(same, found)

    # Each cell's stain: nearer its peak than any other cell's, within reach, and its own
    # blob's (not a platelet's beside it).
    rows = tf.cast(tf.range(size[0]), tf.float32)
    cols = tf.cast(tf.range(size[1]), tf.float32)
    d_rows = rows[None, :, None] - points[:, 0, None, None]
    d_cols = cols[None, None, :] - points[:, 1, None, None]
    dist2 = tf.square(d_rows) + tf.square(d_cols)  # [C, h, w]
    dist2_kept = tf.where(kept[:, None, None], dist2, np.float32(np.inf))
    nearest = tf.equal(dist2_kept, tf.reduce_min(dist2_kept, axis=0, keepdims=True))
    blob = density[None] >= config.blob_level * values[:, None, None]  # the cell's own stain, not a neighbour's
    region = (
        nearest & blob & (dist2 <= (config.reach * unit) ** 2) & (stain[0, :, :, 0] > 0)[None] & kept[:, None, None]
    )
    stained = tf.cast(region, tf.float32)
    top, bottom = _trimmed_extent(tf.reduce_sum(stained, axis=2), config.trim)  # rows, from [C, h]
    left, right = _trimmed_extent(tf.reduce_sum(stained, axis=1), config.trim)  # columns, from [C, w]
    # The stain's extent grown to the cell's: each side at least `roundness` x the longer
    # one (a cell is round where its nucleus is not), then `margin` of it on each side.
    extent_y, extent_x = bottom - top + 1, right - left + 1
    longer = tf.maximum(extent_y, extent_x)
    half_y = tf.maximum(extent_y, config.roundness * longer) * (0.5 + config.margin)
    half_x = tf.maximum(extent_x, config.roundness * longer) * (0.5 + config.margin)
    centre_y, centre_x = (top + bottom + 1) / 2, (left + right + 1) / 2
    # Work pixel edges -> field pixel corners.
    scale_y = tf.cast(height, tf.float32) / tf.cast(size[0], tf.float32)
    scale_x = tf.cast(width, tf.float32) / tf.cast(size[1], tf.float32)
    ymin = tf.maximum((centre_y - half_y) * scale_y, 0.0)
    ymax = tf.minimum((centre_y + half_y) * scale_y - 1, tf.cast(height - 1, tf.float32))
    xmin = tf.maximum((centre_x - half_x) * scale_x, 0.0)
    xmax = tf.minimum((centre_x + half_x) * scale_x - 1, tf.cast(width - 1, tf.float32))
    boxes = tf.cast(tf.round(tf.stack([xmin, ymin, xmax, ymax], axis=1)), tf.int32)
    # A cell's stain must cover min_area red-cell areas and min_share of the field's largest cell's.
    area = tf.reduce_sum(stained, axis=[1, 2]) / unit**2
    valid = kept & (area >= config.min_area) & (area >= config.min_share * tf.reduce_max(area))
    edge = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= width - 1) | (boxes[:, 3] >= height - 1)
    # Kept cells first (top_k already sorted them by peak), padded to `cells` slots.
    order = tf.argsort(tf.cast(~valid, tf.int32), stable=True)[:cells]
    pad = cells - tf.shape(order)[0]
    scores = tf.pad(tf.gather(tf.where(valid, values, 0.0), order), [[0, pad]])
    edge = tf.pad(tf.gather(edge & valid, order), [[0, pad]])
    boxes = tf.pad(tf.gather(tf.where(valid[:, None], boxes, 0), order), [[0, pad], [0, 0]])
    valid = tf.pad(tf.gather(valid, order), [[0, pad]])
    return boxes, valid, edge, scores


def _blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of float [N, H, W, 1], zero-padded."""
    kernel = gaussian_kernel(2 * math.ceil(3 * sigma) + 1, sigma)
    images = tf.nn.conv2d(images, kernel.reshape(-1, 1, 1, 1), 1, "SAME")
    return tf.nn.conv2d(images, kernel.reshape(1, -1, 1, 1), 1, "SAME")


def _trimmed_extent(counts: tf.Tensor, trim: float):
    """float32 first and last index [C] of each row of ``counts`` [C, L] (stained pixels per
    row or column) once ``trim`` of the stain is left out at either end: a few stained
    specks past the cell (a platelet, a red cell's inclusion) do not stretch its box."""
    total = tf.cumsum(counts, axis=1)
    whole = total[:, -1:]
    first = tf.argmax(total > trim * whole, axis=1)
    last = tf.argmax(total >= (1.0 - trim) * whole, axis=1)
    return tf.cast(first, tf.float32), tf.cast(last, tf.float32)


def _greedy_keep(same: tf.Tensor, found: tf.Tensor) -> tf.Tensor:
    """bool [C]: greedy non-maximum suppression over candidates sorted strongest first;
    ``same[i, j]``: i and j are one cell."""
    count = tf.shape(found)[0]

    def step(i, kept):
        clash = tf.reduce_any(same[i] & kept & (tf.range(count) < i))
        return i + 1, tf.tensor_scatter_nd_update(kept, [[i]], [found[i] & ~clash])

    _, kept = tf.while_loop(lambda i, _: i < count, step, (0, tf.zeros_like(found)))
    return kept


def find_cells_tf(fields: tf.Tensor, config: FinderConfig | None = None) -> FoundCells:
    """uint8 RGB ``[N, H, W, 3]`` -> :class:`FoundCells` (``config.max_cells`` slots a field)."""
    config = config or FinderConfig()
    fields = tf.convert_to_tensor(fields, tf.uint8)
    cells = config.max_cells
    signature = (
        tf.TensorSpec([cells, 4], tf.int32),
        tf.TensorSpec([cells], tf.bool),
        tf.TensorSpec([cells], tf.bool),
        tf.TensorSpec([cells], tf.float32),
    )
    found = tf.map_fn(lambda field: _find_one(field, config), fields, fn_output_signature=signature)
    return FoundCells(*found)


@functools.cache
def _compiled(config: FinderConfig):
    """One traced finder per config, for fields of any size."""
    return tf.function(
        lambda fields: find_cells_tf(fields, config),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )


def find_cells(field: np.ndarray, config: FinderConfig | None = None) -> list[CellBox]:
    """Every white cell in one uint8 RGB field [H, W, 3] of any size and magnification,
    the surest first (:func:`find_cells_tf` on one field)."""
    field = np.asarray(field)
    if field.dtype != np.uint8 or field.ndim != 3 or field.shape[2] != 3 or min(field.shape[:2]) < 1:
        raise DataError(f"a field of {field.dtype} {list(field.shape)}: the finder takes uint8 RGB [height, width, 3]")
    found = _compiled(config or FinderConfig())(tf.convert_to_tensor(field[None]))
    boxes, valid, edge, scores = (tensor.numpy()[0] for tensor in found)
    return [
        CellBox(int(box[0]), int(box[1]), int(box[2]), int(box[3]), bool(cut), float(score))
        for box, kept, cut, score in zip(boxes, valid, edge, scores)
        if kept
    ]
