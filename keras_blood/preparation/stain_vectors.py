"""Macenko stain normalisation in batched TensorFlow ops (Macenko et al., ISBI 2009).

A stained cell absorbs light: in optical density (OD, ``-log(I / 256)``) each pixel is a sum
of the two stains' colours, haematoxylin (the nucleus) and eosin (red cells, granules),
weighted by how much of each is there. Labs differ in what those two colours are (one
lab's nuclei blue, another's near black, a third's magenta) and in how much stain they use.
Macenko's method finds each image's own two stain vectors (the extreme angles of its
stained pixels in the plane of their two main OD directions), splits every pixel into the
two amounts, scales each amount by its 99th percentile, and redraws the image with one
reference pair of stains. Shapes and the share of each stain stay; the lab's hues go.

Written for a batch of small crops inside a graph (the tf.data pipeline and the serving
signature alike): masks and sorted percentiles instead of boolean indexing, so every shape is
static. torchstain's TensorFlow normaliser does the same for one image at a time with
dynamic shapes, which a batched serving graph cannot take.
"""

from __future__ import annotations

import tensorflow as tf

# The reference stains and their 99th-percentile amounts (the values of Macenko's and
# torchstain's reference image): columns haematoxylin, eosin, in R, G, B optical density.
REFERENCE_STAINS = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
REFERENCE_MAX_AMOUNTS = (1.9705, 1.0308)
STAINED_OD = 0.3  # a pixel with less optical density in all three channels together is background
ANGLE_PERCENTILE = 1.0  # the stain vectors: this and 100 minus this percentile of the angles
MIN_STAINED_PIXELS = 16  # fewer stained pixels: the reference stains stand in for the image's own
WHITE_PERCENTILE = 99.0  # each channel's lamp brightness: this percentile of the image's pixels
BLACK_OD = 2.5  # more optical density than this in every channel: black, not stain
PLANE_STEPS = 30  # orthogonal-iteration steps for the plane of the two stains
NUCLEUS_PERCENTILE = 95.0  # the densest stained pixels, above this percentile: the nucleus


def _masked_percentile(values: tf.Tensor, mask: tf.Tensor, percent: float) -> tf.Tensor:
    """Per row of ``values`` ``[N, P]``, the ``percent`` percentile of the entries where
    ``mask`` is true (nearest rank; 0 for a row without any)."""
    count = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    ordered = tf.sort(tf.where(mask, values, values.dtype.max), axis=1)  # unmasked entries last
    rank = tf.cast(tf.round(percent / 100.0 * tf.cast(tf.maximum(count - 1, 0), tf.float32)), tf.int32)
    return tf.where(count > 0, tf.gather(ordered, rank, batch_dims=1), 0.0)


def _orthonormal(q: tf.Tensor) -> tf.Tensor:
    """Gram-Schmidt on the two columns of ``q`` ``[N, 3, 2]``."""
    first = tf.math.l2_normalize(q[:, :, 0], axis=-1)
    second = q[:, :, 1] - tf.reduce_sum(q[:, :, 1] * first, -1, keepdims=True) * first
    return tf.stack([first, tf.math.l2_normalize(second, axis=-1)], axis=-1)


def _main_plane(covariance: tf.Tensor) -> tf.Tensor:
    """The two leading eigenvectors of each symmetric ``[N, 3, 3]`` matrix, ``[N, 3, 2]`` (the
    largest first), by orthogonal iteration: matrix products only, which LiteRT runs (it has
    no eigen-decomposition). The plane converges as (third / second eigenvalue) to the power of
    the steps; two stains leave the third far below the others."""
    q = _orthonormal(tf.tile(tf.constant([[[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]]), [tf.shape(covariance)[0], 1, 1]))
    for _ in range(PLANE_STEPS):
        q = _orthonormal(tf.einsum("nij,njk->nik", covariance, q))
    return q


def image_stains(od: tf.Tensor, stained: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Each image's stain vectors from its OD pixels ``[N, P, 3]`` where ``stained`` ``[N, P]``:
    ``[N, 3, 2]`` (columns haematoxylin, eosin; unit length) and whether the image had enough
    stained pixels to find them (``[N]``; where not, the reference stains)."""
    weight = tf.cast(stained, tf.float32)[..., None]
    count = tf.reduce_sum(weight, axis=1)  # [N, 1]
    mean = tf.reduce_sum(od * weight, axis=1) / tf.maximum(count, 1.0)
    centred = (od - mean[:, None]) * weight
    covariance = tf.einsum("npi,npj->nij", centred, centred) / tf.maximum(count, 1.0)[..., None]
    plane = _main_plane(covariance)
    # An eigenvector's sign is arbitrary; stains absorb, so point each into positive OD.
    plane *= tf.where(tf.reduce_sum(plane, axis=1, keepdims=True) < 0, -1.0, 1.0)
    projected = tf.einsum("npc,nck->npk", od, plane)
    angle = tf.atan2(projected[..., 1], projected[..., 0])
    low = _masked_percentile(angle, stained, ANGLE_PERCENTILE)
    high = _masked_percentile(angle, stained, 100.0 - ANGLE_PERCENTILE)

    def direction(phi):
        return tf.math.l2_normalize(tf.einsum("nck,nk->nc", plane, tf.stack([tf.cos(phi), tf.sin(phi)], axis=-1)), -1)

    first, second = direction(low), direction(high)
    # Which is haematoxylin: the one nearer the colour of the densest stained pixels, the
    # nucleus, whatever its hue (blue in one lab, near black or magenta in others).
    density = tf.reduce_sum(od, axis=-1)
    densest = stained & (density >= _masked_percentile(density, stained, NUCLEUS_PERCENTILE)[:, None])
    nucleus = tf.math.l2_normalize(tf.reduce_sum(od * tf.cast(densest, tf.float32)[..., None], axis=1), -1)
    first_is_h = (tf.reduce_sum(first * nucleus, -1) >= tf.reduce_sum(second * nucleus, -1))[:, None]
    stains = tf.stack([tf.where(first_is_h, first, second), tf.where(first_is_h, second, first)], axis=-1)
    found = count[:, 0] >= MIN_STAINED_PIXELS
    reference = tf.math.l2_normalize(tf.constant(REFERENCE_STAINS, tf.float32), axis=0)
    return tf.where(found[:, None, None], stains, reference), found


def normalize_macenko(images: tf.Tensor) -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8: each image redrawn with the reference stains, each
    stain's amount scaled so that its 99th percentile is the reference's."""
    shape = tf.shape(images)
    pixels = tf.reshape(tf.cast(images, tf.float32), [shape[0], -1, 3])
    everywhere = tf.ones_like(pixels[..., 0], dtype=tf.bool)
    # The lamp: each image's brightest pixels (per channel) are taken as unstained, so that a
    # grey or tinted background has no optical density, as a white one has.
    white = tf.stack([_masked_percentile(pixels[..., c], everywhere, WHITE_PERCENTILE) for c in range(3)], -1)
    od = tf.maximum(-tf.math.log((pixels + 1.0) / (white[:, None] + 1.0)), 0.0)
    # Stained: density in all (a blood stain leaves one channel nearly clear in a nucleus, so
    # the sum, not each channel); black in every channel (a rotation's corners, a burnt-in bar)
    # is not stain.
    stained = (tf.reduce_sum(od, axis=-1) >= STAINED_OD) & (tf.reduce_min(od, axis=-1) <= BLACK_OD)
    stains, _ = image_stains(od, stained)
    # Least squares per pixel: amounts = (S^T S)^-1 S^T od, S the image's [3, 2] stains; the
    # 2x2 inverse written out (LiteRT has no matrix inverse).
    gram = tf.einsum("nck,ncl->nkl", stains, stains)
    a, b, d = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    det = tf.maximum(a * d - b * b, 1e-6)
    inverse = tf.stack([tf.stack([d, -b], -1), tf.stack([-b, a], -1)], -2) / det[:, None, None]
    solve = tf.einsum("nkl,ncl->nkc", inverse, stains)
    amounts = tf.einsum("nkc,npc->npk", solve, od)
    top = tf.stack([_masked_percentile(amounts[..., k], stained, 99.0) for k in range(2)], axis=-1)
    amounts *= tf.constant(REFERENCE_MAX_AMOUNTS) / tf.maximum(top, 1e-3)[:, None]
    od_out = tf.einsum("ck,npk->npc", tf.constant(REFERENCE_STAINS, tf.float32), tf.maximum(amounts, 0.0))
    redrawn = 256.0 * tf.exp(-od_out) - 1.0
    return tf.cast(tf.clip_by_value(tf.round(tf.reshape(redrawn, shape)), 0, 255), tf.uint8)
