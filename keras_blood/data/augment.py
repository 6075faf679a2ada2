"""Training-time augmentation as a batched tf.data map: every op is vectorised over the batch.

Images arrive as float32 pixels in [0, 255] and leave in the same range, so the model's
own scaling is unchanged; labels are one-hot (MixUp blends them).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_blood.config.schema import AugmentConfig
from keras_blood.preparation.color import gaussian_blur

Batch = tuple[tf.Tensor, tf.Tensor]


def _per_sample(batch: tf.Tensor, shape=(), low=0.0, high=1.0) -> tf.Tensor:
    return tf.random.uniform(tf.concat([tf.shape(batch)[:1], shape], 0), low, high)


def random_flips(images: tf.Tensor) -> tf.Tensor:
    flip_lr = _per_sample(images, [1, 1, 1]) < 0.5
    images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
    flip_ud = _per_sample(images, [1, 1, 1]) < 0.5
    return tf.where(flip_ud, tf.reverse(images, axis=[1]), images)


def random_rot90(images: tf.Tensor) -> tf.Tensor:
    """A random multiple of 90 degrees per image (only 0/180 when height != width)."""
    square = images.shape[1] == images.shape[2]
    turns = [0, 1, 2, 3] if square else [0, 2]
    views = tf.stack([tf.image.rot90(images, k) for k in turns])  # [V, B, H, W, C]
    choice = tf.random.uniform(tf.shape(images)[:1], 0, len(turns), dtype=tf.int32)
    return tf.gather_nd(views, tf.stack([choice, tf.range(tf.shape(images)[0])], axis=1))


def color_jitter(images: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    if cfg.hue:  # each image's hues turned by one random angle: a stain bluer or redder than the training labs'
        hsv = tf.image.rgb_to_hsv(images / 255.0)
        turn = _per_sample(images, [1, 1, 1], -cfg.hue, cfg.hue)
        hue = tf.math.floormod(hsv[..., :1] + turn, 1.0)
        images = 255.0 * tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))
    if cfg.saturation:
        grey = tf.reduce_mean(images, axis=-1, keepdims=True)
        factor = _per_sample(images, [1, 1, 1], 1 - cfg.saturation, 1 + cfg.saturation)
        images = grey + factor * (images - grey)
    if cfg.contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        factor = _per_sample(images, [1, 1, 1], 1 - cfg.contrast, 1 + cfg.contrast)
        images = mean + factor * (images - mean)
    if cfg.brightness:
        images += 255.0 * _per_sample(images, [1, 1, 1], -cfg.brightness, cfg.brightness)
    if cfg.channel_gain:
        images *= _per_sample(images, [1, 1, 3], 1 - cfg.channel_gain, 1 + cfg.channel_gain)
    if cfg.grayscale:
        grey = tf.reduce_sum(images * [0.299, 0.587, 0.114], axis=-1, keepdims=True)
        images = tf.where(_per_sample(images, [1, 1, 1]) < cfg.grayscale, grey, images)
    return tf.clip_by_value(images, 0.0, 255.0)


# Ruifrok and Johnston's haematoxylin, eosin and DAB optical densities (rows: stains;
# columns: R, G, B), as scikit-image's rgb2hed uses them.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def random_stain(images: tf.Tensor, amount: float) -> tf.Tensor:
    """HED jitter (Tellez et al. 2018): each image's haematoxylin, eosin and DAB optical
    densities scaled by a random factor in [1 - ``amount``, 1 + ``amount``] and shifted by
    up to ``amount``, as another lab's staining would move them. The shift reaches the
    background too, which tints it as another lamp or a yellowish mount would. Exact at
    factor 1 and shift 0 (the densities are not clipped between the two products)."""
    density = -tf.math.log(tf.maximum(images, 1.0) / 255.0)  # optical density, 0 on white
    stains = tf.einsum("bhwc,cs->bhws", density, HED_FROM_RGB)
    factor = _per_sample(images, [1, 1, 3], 1.0 - amount, 1.0 + amount)
    shift = _per_sample(images, [1, 1, 3], -amount, amount)
    density = tf.einsum("bhws,sc->bhwc", stains * factor + shift, RGB_FROM_HED)
    return tf.clip_by_value(255.0 * tf.exp(-density), 0.0, 255.0)


def random_sharpen(images: tf.Tensor, amount: float, blur: float = 0.0) -> tf.Tensor:
    """Unsharp masking by a random amount in [-``blur``, ``amount``] per image (Gaussian
    sigma 1): a positive amount sharpens (images as sharp as another microscope's, from a
    training set's softer ones), a negative one mixes in the blurred image (softer ones)."""

    detail = images - gaussian_blur(images, 5, 1.0)
    return tf.clip_by_value(images + _per_sample(images, [1, 1, 1], -blur, amount) * detail, 0.0, 255.0)


def random_background_tint(images: tf.Tensor, amount: float) -> tf.Tensor:
    """Each image's background (its pixels brighter than its mean luma, fully from half a
    standard deviation above) shifted by a random colour, up to ``amount`` x 255 in each of R,
    G and B: a lab whose background colour follows the class (one set's eosinophils on a
    yellowish field) then teaches nothing through it."""
    luma = tf.reduce_sum(images * [0.299, 0.587, 0.114], axis=-1, keepdims=True)
    mean = tf.reduce_mean(luma, axis=[1, 2, 3], keepdims=True)
    spread = tf.math.reduce_std(luma, axis=[1, 2, 3], keepdims=True)
    background = tf.clip_by_value(2.0 * (luma - mean) / tf.maximum(spread, 1.0), 0.0, 1.0)
    tint = 255.0 * _per_sample(images, [1, 1, 3], -amount, amount)
    return tf.clip_by_value(images + background * tint, 0.0, 255.0)


def random_scale(images: tf.Tensor, amount: float) -> tf.Tensor:
    """Each image zoomed about its centre by a random factor in [1 - ``amount``, 1 +
    ``amount``], at its own size; where a smaller image leaves the frame, the mean colour
    of its border fills it."""
    zoom = _per_sample(images, [], 1.0 - amount, 1.0 + amount)
    half = 0.5 / zoom
    boxes = tf.stack([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], axis=1)
    index = tf.range(tf.shape(images)[0])
    zoomed = tf.image.crop_and_resize(images, boxes, index, images.shape[1:3], extrapolation_value=-1.0)
    edges = tf.concat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    border = tf.reduce_mean(edges, axis=1)[:, None, None, :]
    return tf.where(zoomed < 0.0, border, zoomed)


def random_noise(images: tf.Tensor, amount: float) -> tf.Tensor:
    """Gaussian pixel noise, each image's standard deviation drawn from [0, ``amount`` x 255]."""
    sigma = 255.0 * _per_sample(images, [1, 1, 1], 0.0, amount)
    return tf.clip_by_value(images + sigma * tf.random.normal(tf.shape(images)), 0.0, 255.0)


def random_jpeg(images: tf.Tensor, lowest_quality: int) -> tf.Tensor:
    """Each image re-encoded as a JPEG at its own quality in [``lowest_quality``, 95]
    (tf.image encodes one image at a time). Not above 95: at 100, libjpeg clips the finest
    detail's coefficients, and a one-pixel pattern comes back worse than at 50."""
    quality = tf.random.uniform(tf.shape(images)[:1], lowest_quality, 96, dtype=tf.int32)

    def encode(image_and_quality):
        image, image_quality = image_and_quality
        return tf.image.adjust_jpeg_quality(tf.cast(tf.round(image), tf.uint8), image_quality)

    encoded = tf.map_fn(encode, (images, quality), fn_output_signature=tf.uint8)
    return tf.ensure_shape(tf.cast(encoded, tf.float32), images.shape)


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float) -> Batch:
    """MixUp (Zhang et al. 2018): blend each example with a random partner, labels too."""
    gamma_1 = tf.random.gamma(tf.shape(images)[:1], alpha)
    gamma_2 = tf.random.gamma(tf.shape(images)[:1], alpha)
    lam = gamma_1 / (gamma_1 + gamma_2)  # Beta(alpha, alpha)
    partner = tf.random.shuffle(tf.range(tf.shape(images)[0]))
    lam_images = tf.reshape(lam, [-1, 1, 1, 1])
    images = lam_images * images + (1 - lam_images) * tf.gather(images, partner)
    labels = lam[:, None] * labels + (1 - lam[:, None]) * tf.gather(labels, partner)
    return images, labels


def make_augment(cfg: AugmentConfig) -> Callable[[tf.Tensor, tf.Tensor], Batch] | None:
    """The batch map function for ``cfg``, or None when every technique is off."""
    if not cfg.enabled:
        return None
    cutmix = keras.layers.CutMix(factor=cfg.cutmix) if cfg.cutmix else None

    def augment(images: tf.Tensor, labels: tf.Tensor) -> Batch:
        if cfg.flip:
            images = random_flips(images)
        if cfg.rot90:
            images = random_rot90(images)
        if cfg.scale:
            images = random_scale(images, cfg.scale)
        if cfg.stain:
            images = random_stain(images, cfg.stain)
        if cfg.background_tint:
            images = random_background_tint(images, cfg.background_tint)
        images = color_jitter(images, cfg)
        if cfg.sharpen or cfg.blur:
            images = random_sharpen(images, cfg.sharpen, cfg.blur)
        if cfg.noise:
            images = random_noise(images, cfg.noise)
        if cfg.jpeg:
            images = random_jpeg(images, cfg.jpeg)
        if cfg.mixup_alpha:
            images, labels = mixup(images, labels, cfg.mixup_alpha)
        if cutmix is not None:
            mixed = cutmix({"images": images, "labels": labels}, training=True)
            images, labels = mixed["images"], mixed["labels"]
        return images, labels

    return augment
