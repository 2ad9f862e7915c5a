"""Segment whole scans: sliding-window or whole-volume prediction.

The window shape is fixed for a scan (the borders are handled by padding, not
by smaller windows), so a compiled model never sees a new shape and XLA never
recompiles. Overlapping windows are blended with a Gaussian importance map,
as in nnU-Net and MONAI, so window borders leave no seams. By default the
windows are cut, predicted and blended on the model's device in one compiled
loop (``device_windows``); the volume goes there once and the blended sums
come back once.
"""

import itertools
import numbers
import shutil
import time
import weakref
from pathlib import Path

import keras
import numpy as np
from scipy import ndimage, special

from tversky_keras.atomic import (TEMPORARY_STALE_AFTER, owned_temporary,
                                  remove_stale_temporaries, write_json)
from tversky_keras.claims import current_holder, try_claim
from tversky_keras.data import load_subject, pad_to_multiple, save_nifti_like
from tversky_keras.data.grid import from_grid, grid_to_canonical
from tversky_keras.models import MAX_INPUT_SIDE
# Documented here in 0.2.0's API reference: kept importable from this module.
from tversky_keras.saving import load_saved_model  # noqa: F401
from tversky_keras.scan_spec import check_model_modalities, scan_spec

SEGMENTATION_FILES = ("probability.nii.gz", "mask.nii.gz")
UNCERTAINTY_FILES = ("uncertainty.nii.gz", "lesions.json")
MANIFEST = "segmentation.json"
UNCERTAINTY_VOLUMES = ("predictive entropy (nats)", "mutual information (nats)")
# The claim on an output folder while a set is published, and how long a writer waits
# for it: publishing is a few renames, so a longer wait means a hung holder.
PUBLISH_LOCK = ".segmentation.lock"
PUBLISH_WAIT = 120.0
# A temporary folder whose owner cannot be checked (another host) is stale when older
# than any write could take: writing a whole-brain set takes seconds.
STAGING_STALE_AFTER = TEMPORARY_STALE_AFTER
STAGING_PREFIX = "segmentation"


def input_multiple(model):
    """The number every spatial input size must be a multiple of.

    The model's ScanSpec records it; a model built by hand (``unet3d`` without
    ``with_scan_spec``) gets ``2 ** n`` for its ``n`` MaxPooling3D layers, so
    a volume is padded to a size its skip connections can concatenate.
    """
    spec = scan_spec(model)
    if spec:
        return spec["multiple_of"]
    return 2 ** _poolings(model)


def _poolings(layer):
    count = 0
    for sub in getattr(layer, "layers", ()):
        count += isinstance(sub, keras.layers.MaxPooling3D) + _poolings(sub)
    return count


def gaussian_importance(window, sigma_scale=0.125):
    """Separable Gaussian weights over a window, peak 1 (MONAI's default sigma)."""
    axes = []
    for size in window:
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2
        axes.append(np.exp(-0.5 * (x / max(size * sigma_scale, 1e-6)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def window_starts(size, window, step):
    """Start offsets along one axis: regular steps, the last window flush with the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, step))
    return starts + [size - window]


# How far outside [0, 1] a probability may stray by float rounding before the model's
# outputs are refused as not probabilities (logits, say).
PROBABILITY_SLACK = 1e-3

DEFAULT_OVERLAP = 0.5
"""``predict_volume``'s default overlap, the reference of ``max_window_factor``."""


def window_corners(shape, window, overlap):
    """The corners of the windows that tile a volume of ``shape`` (already padded to at
    least ``window``) at ``overlap``, in the order they are predicted."""
    steps = [max(1, int(round(w * (1 - overlap)))) for w in window]
    return [(i, j, k)
            for i in window_starts(shape[0], window[0], steps[0])
            for j in window_starts(shape[1], window[1], steps[1])
            for k in window_starts(shape[2], window[2], steps[2])]


def window_count(shape, window, overlap):
    """How many windows ``predict_volume`` cuts from a volume of ``shape`` at ``overlap``
    (one prediction; mirroring repeats them)."""
    padded = [max(int(s), int(w)) for s, w in zip(shape, window)]
    return len(window_corners(padded, tuple(int(w) for w in window), overlap))


def check_window_work(shape, window, overlap, multiple_of, max_window_factor=None,
                      predictions=1, report=None):
    """Refuse a window and overlap that cut more than ``max_window_factor`` times the
    windows of ``DEFAULT_OVERLAP`` (ValueError, naming both counts), and ``report`` the
    count. A window the model cannot take is left to ``predict_volume``'s own check."""
    try:
        window = tuple(int(w) for w in window)
        if len(window) != 3 or any(w < 1 or w % multiple_of for w in window):
            return
    except (TypeError, ValueError):
        return
    count = window_count(shape, window, overlap)
    reference = window_count(shape, window, DEFAULT_OVERLAP)
    if max_window_factor is not None and count > max_window_factor * reference:
        raise ValueError(
            f"window {'x'.join(map(str, window))} at overlap {overlap:g} cuts {count:,} windows "
            f"from this {'x'.join(map(str, shape))} volume, {count / reference:.0f} times the "
            f"{reference:,} at overlap {DEFAULT_OVERLAP:g}: lower --overlap or raise --window, "
            f"or give --force to run them")
    if report is not None:
        report(f"{count:,} windows of {'x'.join(map(str, window))} per prediction"
               + (f", {predictions} predictions (mirrored)" if predictions > 1 else ""))


def _pad_to(image, shape):
    pads = [(0, max(t - s, 0)) for s, t in zip(image.shape[:3], shape)] + [(0, 0)]
    return np.pad(image, pads)


def _predict_whole(model, batch):
    # A direct call, not predict_on_batch: a tf.function would be retraced for
    # every new volume shape, which costs more than it saves for one call.
    return np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), dtype=np.float32)


def check_mirror_axes(mirror_axes):
    """``mirror_axes`` as a sorted tuple of distinct spatial axes (0, 1, 2), or a ValueError."""
    try:
        axes = tuple(mirror_axes)
    except TypeError:
        raise ValueError(f"mirror_axes={mirror_axes!r}: give spatial axes, e.g. (0,) or "
                         f"(0, 1, 2)") from None
    if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) and 0 <= a <= 2
               for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes={mirror_axes!r}: each must be a spatial axis 0, 1 or 2, "
                         f"at most once")
    return tuple(sorted(int(a) for a in axes))


def predict_volume(model, image, window=None, overlap=0.5, blend="gaussian", batch_size=1,
                   multiple_of=None, device_windows=True, mirror_axes=(), members=None,
                   max_window_factor=None, report=None):
    """Class probabilities for a whole image ``(X, Y, Z, C)``.

    Args:
        model: a Keras segmentation model with channel-last 3D input.
        image: float array ``(X, Y, Z, C)``.
        window: ``None`` for one whole-volume pass, else the window shape
            ``(wx, wy, wz)``, each a multiple of ``multiple_of``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` or ``"constant"`` weighting of overlapping windows.
        batch_size: windows per model call.
        multiple_of: the spatial multiple the model needs; ``input_multiple``
            of the model when ``None``.
        device_windows: cut, predict and blend the windows in one compiled
            loop on the model's device (``window_sums``); ``False`` moves
            each batch of windows through the host (``predict_on_batch`` and
            NumPy sums). Both give the same map up to float rounding. On JAX
            the device loop compiles once per volume shape (the host loop once
            per window shape): for many scans of different sizes there,
            ``False`` can be faster.
        mirror_axes: test-time mirroring, as nnU-Net does: the image is also
            predicted flipped along every combination of these spatial axes
            (2**k predictions for k axes), each flipped back, and the
            probabilities averaged. ``()`` (the default): one prediction.
        members: a ``MemberSums`` to which the lesion probability of each
            prediction (each mirror) is added, for ``uncertainty_maps``;
            ``segment_subject`` passes one through every model of an
            ensemble. ``None``: the members are not kept.
        max_window_factor: refuse (ValueError) a window and overlap that cut more
            than this many times the windows that overlap ``DEFAULT_OVERLAP`` cuts
            (``window_count``): a tiny window at overlap 0.99 is hours of work.
            ``None``: no bound.
        report: called with one line (the windows per prediction and the
            predictions) before the work starts, and a line after each
            prediction; ``None``: silent.

    Returns:
        float32 array ``(X, Y, Z, n_classes)``.
    """
    mirror_axes = check_mirror_axes(mirror_axes)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty (X, Y, Z, C) array; got shape {image.shape}")
    channels = model.input_shape[-1]
    if channels is not None and image.shape[-1] != channels:
        raise ValueError(f"the model takes {channels} input channels, the image has "
                         f"{image.shape[-1]} (shape {image.shape})")
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap}: must be in [0, 1)")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r}: choose gaussian or constant")
    flips = [combo for k in range(len(mirror_axes) + 1)
             for combo in itertools.combinations(mirror_axes, k)]
    if window is not None:
        check_window_work(image.shape[:3], window, overlap, multiple_of or input_multiple(model),
                          max_window_factor, len(flips), report)
    total = None
    for number, axes in enumerate(flips, 1):
        flipped = np.flip(image, axes) if axes else image
        probs = _predict_once(model, flipped, window, overlap, blend, batch_size, multiple_of,
                              device_windows)
        probs = np.flip(probs, axes) if axes else probs
        if members is not None:
            members.add(lesion_probability(probs))
        total = probs if total is None else total + probs
        if report is not None and len(flips) > 1:
            report(f"prediction {number}/{len(flips)} done")
    return (total / len(flips)).astype(np.float32)


def _predict_once(model, image, window, overlap, blend, batch_size, multiple_of,
                  device_windows):
    """``predict_volume`` of one unmirrored image, its options checked."""
    if multiple_of is None:
        multiple_of = input_multiple(model)
    shape = image.shape[:3]
    fixed = tuple(model.input_shape[1:4])
    if window is None and all(isinstance(n, int) for n in fixed):
        raise ValueError(f"this model takes inputs of {'x'.join(map(str, fixed))} voxels only: "
                         f"predict in windows of that size (--window "
                         f"{','.join(map(str, fixed))}; predict_volume(window=...))")
    if window is None:
        padded = _pad_to(image, pad_to_multiple(shape, multiple_of))
        probs = _predict_whole(model, padded[None])[0]
        return probs[: shape[0], : shape[1], : shape[2]]

    if not all(isinstance(w, numbers.Integral) for w in window):
        raise ValueError(f"window={window}: sizes must be integers")
    window = tuple(int(w) for w in window)
    bad = [w for w in window if w % multiple_of or not 0 < w <= MAX_INPUT_SIDE]
    if len(window) != 3 or bad:
        raise ValueError(f"window={window}: need three sizes, each a multiple of {multiple_of} "
                         f"and at most {MAX_INPUT_SIDE}")
    padded = _pad_to(image, window)
    corners = window_corners(padded.shape[:3], window, overlap)
    # More windows per batch than there are would only predict zero-filled windows.
    batch_size = min(batch_size, len(corners))
    weights = gaussian_importance(window) if blend == "gaussian" else np.ones(window, np.float32)
    norm = np.zeros(padded.shape[:3], np.float32)
    for i, j, k in corners:
        norm[i:i + window[0], j:j + window[1], k:k + window[2]] += weights
    # The device loop sizes its buffer by the model's classes: a model that does not
    # declare them (built by hand) goes through the host.
    if device_windows and model.output_shape[-1] is not None:
        total = window_sums(model, padded, corners, weights, batch_size)
        probs = total / norm[..., None]
        return probs[: shape[0], : shape[1], : shape[2]]
    total = None
    for b in range(0, len(corners), batch_size):
        chunk = corners[b: b + batch_size]
        batch = np.zeros((batch_size, *window, padded.shape[3]), np.float32)
        for n, (i, j, k) in enumerate(chunk):
            batch[n] = padded[i:i + window[0], j:j + window[1], k:k + window[2]]
        # Every batch has one shape (the last one is zero-filled), so the
        # compiled predict step is traced once and XLA never recompiles.
        out = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        if total is None:
            total = np.zeros(padded.shape[:3] + out.shape[-1:], np.float32)
        for (i, j, k), probs in zip(chunk, out):
            region = (slice(i, i + window[0]), slice(j, j + window[1]), slice(k, k + window[2]))
            total[region] += probs * weights[..., None]
    probs = total / norm[..., None]
    return probs[: shape[0], : shape[1], : shape[2]]


def window_sums(model, volume, corners, weights, batch_size=1):
    """Sum over windows of ``weights * model(window)``, computed on the model's device.

    One compiled loop (a ``tf.function`` on TensorFlow, ``jax.jit`` on JAX,
    eager device tensors on torch) cuts each batch of windows out of the
    volume, predicts it and adds the weighted probabilities into a device
    buffer, so nothing goes back to the host per window. The window shape and
    batch size are fixed, so the model is traced once; TensorFlow's loop also
    takes any volume shape and number of windows without retracing (JAX
    compiles once per volume shape).

    Args:
        model: a channel-last Keras segmentation model.
        volume: float32 ``(X, Y, Z, C)``, every window inside it.
        corners: the windows' ``(i, j, k)`` start voxels.
        weights: float32 window-shaped importance map.
        batch_size: windows per model call (the last batch is padded with
            repeats of its last window, weighted 0).

    Returns:
        float32 ``(X, Y, Z, n_classes)`` NumPy array of the weighted sums.
    """
    window = tuple(int(w) for w in np.shape(weights))
    n = len(corners)
    batches = -(-n // batch_size)
    padded = list(corners) + [corners[-1]] * (batches * batch_size - n)
    starts = np.asarray(padded, np.int32).reshape(batches, batch_size, 3)
    valid = (np.arange(batches * batch_size) < n).astype(np.float32).reshape(batches, batch_size)
    volume = np.ascontiguousarray(volume, np.float32)
    weights = np.asarray(weights, np.float32)
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        with torch.no_grad():  # eager device tensors: the loop runs on the host, the data not
            total = _window_loop(lambda batch: model(batch, training=False),
                                 keras.ops.convert_to_tensor(volume), starts.tolist(),
                                 valid.tolist(), keras.ops.convert_to_tensor(weights),
                                 window, batch_size, model.output_shape[-1])
        return np.asarray(keras.ops.convert_to_numpy(total), np.float32)
    function = _compiled_window_loop(model, window, batch_size, volume.shape[-1])
    return np.asarray(keras.ops.convert_to_numpy(function(volume, starts, valid, weights)),
                      np.float32)


def _window_loop(call, volume, starts, valid, weights, window, batch_size, n_classes):
    """``window_sums``' loop in ``keras.ops`` (``starts`` indexed ``[batch][window][axis]``)."""
    ops = keras.ops
    channels = volume.shape[-1]
    grid = ops.shape(volume)[:3]
    total = ops.zeros((grid[0], grid[1], grid[2], n_classes), "float32")
    weights = ops.expand_dims(weights, -1)

    def step(b, total):
        corner = [(starts[b][n][0], starts[b][n][1], starts[b][n][2], 0)
                  for n in range(batch_size)]
        batch = ops.stack([ops.slice(volume, c, (*window, channels)) for c in corner])
        probs = ops.cast(call(batch), "float32")
        for n, c in enumerate(corner):
            region = ops.slice(total, c, (*window, n_classes))
            total = ops.slice_update(total, c, region + probs[n] * (weights * valid[b][n]))
        return total

    if isinstance(starts, list):  # torch: plain Python indices, no device-to-host reads
        for b in range(len(starts)):
            total = step(b, total)
        return total
    return ops.fori_loop(0, ops.shape(starts)[0], step, total)


# model -> {(window, batch, channels): function}. The functions reach the model only
# through a weak reference, so an entry (and its traced program) dies with its model.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled_window_loop(model, window, batch_size, channels):
    """The model's compiled ``_window_loop`` for one window shape (built once, then reused)."""
    key = (window, batch_size, channels)
    functions = _COMPILED.setdefault(model, {})
    if key in functions:
        return functions[key]
    n_classes = model.output_shape[-1]
    owner = weakref.ref(model)
    if keras.backend.backend() == "jax":
        import jax

        @jax.jit
        def loop(trainable, non_trainable, volume, starts, valid, weights):
            def call(batch):
                return owner().stateless_call(trainable, non_trainable, batch, training=False)[0]

            return _window_loop(call, volume, starts, valid, weights, window, batch_size,
                                n_classes)

        def function(volume, starts, valid, weights):
            return loop([v.value for v in owner().trainable_variables],
                        [v.value for v in owner().non_trainable_variables],
                        volume, starts, valid, weights)
    else:
        import tensorflow as tf

        function = tf.function(
            lambda volume, starts, valid, weights: _window_loop(
                lambda batch: owner()(batch, training=False), volume, starts, valid, weights,
                window, batch_size, n_classes),
            input_signature=[tf.TensorSpec((None, None, None, channels), tf.float32),
                             tf.TensorSpec((None, batch_size, 3), tf.int32),
                             tf.TensorSpec((None, batch_size), tf.float32),
                             tf.TensorSpec(window, tf.float32)],
            autograph=False)
    functions[key] = function
    return function


def lesion_probability(probs):
    """The lesion channel of softmax output, or the single sigmoid channel."""
    return probs[..., 1] if probs.shape[-1] > 1 else probs[..., 0]


def binary_entropy(probability):
    """Entropy in nats of a lesion probability: ``-p ln p - (1 - p) ln(1 - p)``, 0 at 0 and 1."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    return special.entr(p) + special.entr(1.0 - p)


def uncertainty_maps(members=None, *, mean=None, mean_entropy=None, count=None):
    """Voxel-wise uncertainty of several predictions (ensemble members, mirrors).

    The predictive entropy of the averaged probability ``p̄`` is the total
    uncertainty, ``H[p̄] = -p̄ ln p̄ - (1 - p̄) ln(1 - p̄)``; the mutual
    information between the prediction and the member, ``MI = H[p̄] - mean_m
    H[p_m]``, is the part the members disagree on (knowledge uncertainty;
    Malinin et al. 2022, Shifts). Both in nats, in [0, ln 2].

    Give either the members' stack, or their running sums divided by their
    number (``MemberSums.maps`` does): ``mean`` (``p̄``), ``mean_entropy``
    (``mean_m H[p_m]``) and ``count``.

    Args:
        members: lesion probabilities, the members along axis 0.
        mean: the members' mean probability.
        mean_entropy: the mean of the members' ``binary_entropy``.
        count: the number of members.

    Returns:
        ``{"entropy": H[p̄], "members": count}`` (float32 maps), and with two
        members or more ``"mutual_information"``, its rounding below 0 clipped.

    Raises:
        ValueError: both forms given, or neither, or no member.
    """
    if (members is None) == (mean is None or mean_entropy is None or count is None):
        raise ValueError("give either the members' stack or mean, mean_entropy and count")
    if members is not None:
        members = np.asarray(members, dtype=np.float64)
        count = len(members)
        if count:
            mean, mean_entropy = members.mean(axis=0), binary_entropy(members).mean(axis=0)
    if count < 1:
        raise ValueError("uncertainty needs at least one member")
    entropy = binary_entropy(mean)
    maps = {"entropy": entropy.astype(np.float32), "members": int(count)}
    if count >= 2:
        maps["mutual_information"] = np.maximum(entropy - mean_entropy, 0.0).astype(np.float32)
    return maps


class MemberSums:
    """Running sums of members' lesion probabilities and entropies: two maps in memory,
    however many members. ``add`` each member, then ``maps`` gives ``uncertainty_maps``."""

    def __init__(self):
        self.count = 0
        self.probability = 0.0
        self.entropy = 0.0

    def add(self, probability):
        """Add one member's lesion probability map."""
        self.count += 1
        self.probability = self.probability + np.asarray(probability, dtype=np.float64)
        self.entropy = self.entropy + binary_entropy(probability)

    def maps(self):
        """``uncertainty_maps`` of the members added so far."""
        if not self.count:
            raise ValueError("uncertainty needs at least one member")
        return uncertainty_maps(mean=self.probability / self.count,
                                mean_entropy=self.entropy / self.count, count=self.count)


def check_ensemble(models, names=None):
    """Raise a ValueError unless ``models`` are at least one and all expect the
    scan the first one does (ScanSpec and size multiple); ``names`` (e.g. their
    files) name them in the message, else "model 1 of the ensemble", ..."""
    if not models:
        raise ValueError("no model given")
    names = list(names) if names is not None else [f"model {i} of the ensemble" for i in
                                                    range(1, len(models) + 1)]
    spec, multiple = scan_spec(models[0]), input_multiple(models[0])
    for name, other in zip(names[1:], models[1:]):
        if scan_spec(other) != spec or input_multiple(other) != multiple:
            raise ValueError(
                f"{name} expects another scan than {names[0]} "
                f"({scan_spec(other) or 'no recorded contract'} vs {spec or 'none'}): an "
                f"ensemble must share modalities, voxel size and size multiple")


def segment_subject(model, subject, window=None, overlap=0.5, batch_size=1, modalities=None,
                    spacing=None, canonical=False, mirror_axes=(), uncertainty=False,
                    max_window_factor=None, report=None):
    """Lesion probability of a subject in the scan's own voxel grid.

    The subject is read and normalised as in training, on the grid recorded in
    the model's ScanSpec (modalities, voxel size, size multiple), predicted,
    and mapped back to the geometry of its first modality. A model without a
    ScanSpec (built by hand) needs ``modalities``, in the order it was trained
    on; ``spacing`` then resamples the scan (default: kept), and the size
    multiple comes from its architecture (``input_multiple``).

    With ``canonical=True`` the probability keeps the canonical (RAS+) voxel
    order in which ``read_nifti`` and ``load_subject`` read the scan's files
    (same voxels, same values; axes permuted and flipped), for scoring against
    masks read by them. ``reproduce`` scores its test folds this way, so its
    tables measure what ``predict`` then ``evaluate`` measure.

    ``mirror_axes`` (``predict_volume``'s test-time mirroring) are axes of
    that canonical order: 0 is left-right, 1 back-front, 2 down-up.

    ``model`` may be a list of models (an ensemble, as nnU-Net predicts with
    its folds): the scan is read once and their class probabilities are
    averaged. They must expect the same scan (ScanSpec and size multiple).

    With ``uncertainty=True`` every prediction (each model, each mirror) is a
    member of ``uncertainty_maps``, accumulated as running sums
    (``MemberSums``), and the maps are masked by the brain and mapped back to
    the scan exactly as the probability is.

    ``max_window_factor`` and ``report``: as ``predict_volume``'s (``report`` also
    hears which model of an ensemble is predicting).

    Returns:
        ``(probability, geometry)``: float32 array in the scan's grid and the
        geometry to write it with; with ``uncertainty=True``
        ``(probability, geometry, maps)``, ``maps`` as ``uncertainty_maps``
        returns it, in the scan's grid.

    Raises:
        ValueError: the subject lacks a modality the model needs, or a model
            without a ScanSpec was given no ``modalities``.
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    check_ensemble(models)
    model = models[0]
    spec = scan_spec(model)
    normalization = "zscore"  # a model without a ScanSpec: what train always did
    if spec:
        modalities, spacing = spec["modalities"], spec["spacing"]
        normalization = spec["intensity_normalization"]
    elif modalities is None:
        raise ValueError(
            "this model records no input contract (it was not saved by tversky-keras train): "
            "give its modalities in the order it was trained on (--modalities T1W,T2W,FLAIR)")
    modalities = list(modalities)
    missing = [m for m in modalities if m not in subject.images]
    if missing:
        raise ValueError(
            f"the model expects modalities {', '.join(modalities)} (in that order) but "
            f"subject {subject.id} has no {', '.join(missing)}")
    for each in models:
        check_model_modalities(each, modalities, source=f"subject {subject.id}")
    volume = load_subject(subject, modalities=modalities, target_spacing=spacing,
                          multiple_of=input_multiple(model), normalize=normalization)
    members = MemberSums() if uncertainty else None
    probs = 0.0
    for number, each in enumerate(models, 1):  # a running sum: one map, however many models
        if report is not None and len(models) > 1:
            report(f"model {number}/{len(models)}")
        probs = probs + predict_volume(each, volume.image, window=window, overlap=overlap,
                                       batch_size=batch_size, mirror_axes=mirror_axes,
                                       members=members, max_window_factor=max_window_factor,
                                       report=report)
    probs = probs / len(models)
    lesion = np.where(volume.brain, lesion_probability(probs), 0.0).astype(np.float32)
    if not np.isfinite(lesion).all():
        raise ValueError(
            f"subject {subject.id}: the model gave {np.count_nonzero(~np.isfinite(lesion))} "
            f"non-finite probabilities (NaN or inf); its weights or this scan's values are not "
            f"finite, nothing was written")
    low, high = float(lesion.min()), float(lesion.max())
    if low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK:
        raise ValueError(
            f"subject {subject.id}: the model's outputs run from {low:.3g} to {high:.3g}, not "
            f"probabilities in [0, 1]; end it with a softmax or sigmoid (a model that outputs "
            f"logits cannot be thresholded), nothing was written")
    back = grid_to_canonical if canonical else from_grid

    def to_scan(grid_map, high):
        inside = np.where(volume.brain, grid_map, 0.0).astype(np.float32)
        return np.clip(back(inside, volume.geometry, order=1), 0.0, high).astype(np.float32)

    native = to_scan(lesion, 1.0)
    if not uncertainty:
        return native, volume.geometry
    maps = members.maps()
    for name in ("entropy", "mutual_information"):
        if name in maps:
            maps[name] = to_scan(maps[name], np.log(2.0))
    return native, volume.geometry, maps


def check_threshold(threshold):
    """``threshold`` as a float, or a ValueError: a mask threshold must lie in (0, 1]."""
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold:g}: must lie in (0, 1] (0 would call every "
                         f"voxel lesion, above 1 none)")
    return threshold


def lesion_table(mask, affine, probability, uncertainty):
    """One row per lesion of ``mask`` (26-connected), the most uncertain first.

    Args:
        mask: binary array in the scan's grid.
        affine: the scan's voxel-to-world (scanner mm) affine.
        probability: the lesion probability map, same grid.
        uncertainty: ``uncertainty_maps``' dict, same grid, with both maps.

    Returns:
        A list of dicts: ``id`` (the component's label, 1 to n in scan order),
        ``voxels``, ``volume_ml``, ``centre_voxel`` and ``centre_world`` (the
        centroid, mm), ``mean_probability``, ``mean_entropy`` and
        ``mean_mutual_information``; sorted by mean entropy, descending.
    """
    labels, count = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3, 3), bool))
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    ids = np.arange(1, count + 1)
    voxels = ndimage.sum_labels(np.ones(labels.shape), labels, ids)
    centres = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(-1, 3)
    means = {name: ndimage.mean(np.asarray(values, np.float64), labels, ids)
             for name, values in (("mean_probability", probability),
                                  ("mean_entropy", uncertainty["entropy"]),
                                  ("mean_mutual_information",
                                   uncertainty["mutual_information"]))}
    rows = []
    for n, label in enumerate(ids):
        world = affine[:3, :3] @ centres[n] + affine[:3, 3]
        rows.append({"id": int(label), "voxels": int(voxels[n]),
                     "volume_ml": float(voxels[n] * voxel_ml),
                     "centre_voxel": [float(c) for c in centres[n]],
                     "centre_world": [float(c) for c in world],
                     **{name: float(values[n]) for name, values in means.items()}})
    return sorted(rows, key=lambda row: (-row["mean_entropy"], row["id"]))


def _publishing_claim(out_dir):
    """The claim on ``out_dir``'s publishing lock, waiting up to ``PUBLISH_WAIT`` seconds.

    The lock is a ``tversky_keras.claims`` claim on ``out_dir/.segmentation.lock``, as
    run folders use: a holder that died on this host, or whose heartbeat stopped, is
    taken over.
    """
    lock = out_dir / PUBLISH_LOCK
    deadline = time.monotonic() + PUBLISH_WAIT
    pause = 0.01
    while True:
        claim = try_claim(lock)
        if claim is not None:
            return claim
        if time.monotonic() > deadline:
            holder = current_holder(lock)
            raise TimeoutError(
                f"{out_dir}: another writer has been publishing a segmentation here for over "
                f"{PUBLISH_WAIT:.0f} s ({holder.describe() if holder else 'it has just ended'}); "
                f"give another --out or try again")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def write_segmentation(probability, geometry, out_dir, threshold=0.5, about=None,
                       uncertainty=None):
    """Write ``probability.nii.gz`` (float32), ``mask.nii.gz`` (uint8) and ``segmentation.json``;
    with ``uncertainty``, also ``uncertainty.nii.gz`` and ``lesions.json``.

    The files are published as one set: all are written in full under
    temporary names first; then, holding the output folder's lock (a
    ``tversky_keras.claims`` claim on ``.segmentation.lock``, so concurrent
    writers publish one after the other), the manifest and every file of the
    old set are removed, the new files are renamed into place, and the
    manifest, written last, lists them. A kill at any moment leaves the old
    set, the new set, or an incomplete set without a manifest, never a new
    probability map beside an old mask; an old ``uncertainty.nii.gz`` or
    ``lesions.json`` never stays beside a new set without them. A leftover
    temporary folder is removed by a later write once it is stale (its
    writer's process is gone, or it is older than ``STAGING_STALE_AFTER``),
    never while another writer may be filling it.

    ``uncertainty.nii.gz`` is float32 and 4D in the scan's geometry: volume 0
    the predictive entropy, volume 1 the mutual information (nats).
    ``lesions.json`` holds ``lesion_table`` of the mask: one row per
    26-connected lesion, the most uncertain first.

    Args:
        probability: float array in the scan's grid (``segment_subject``).
        geometry: the scan's ``Geometry``.
        out_dir: the output folder (created).
        threshold: the mask threshold, in (0, 1].
        about: optional dict recorded in the manifest (model, inputs).
        uncertainty: optional ``uncertainty_maps`` dict in the scan's grid,
            of two members or more (``segment_subject(..., uncertainty=True)``).

    Returns:
        ``(probability_path, mask_path)``.

    Raises:
        ValueError: a bad threshold, or uncertainty maps without the mutual
            information (one member).
        TimeoutError: another writer held the folder's lock for ``PUBLISH_WAIT`` s.
    """
    threshold = check_threshold(threshold)
    if uncertainty is not None and "mutual_information" not in uncertainty:
        raise ValueError("uncertainty maps need at least two members (ensemble models or "
                         "mirrors): one prediction has no spread")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir, STAGING_PREFIX, STAGING_STALE_AFTER)
    staging = owned_temporary(out_dir, STAGING_PREFIX)
    staging.mkdir()
    try:
        prob_name, mask_name = SEGMENTATION_FILES
        mask = (probability >= threshold).astype(np.uint8)
        save_nifti_like(probability, geometry, staging / prob_name, np.float32)
        save_nifti_like(mask, geometry, staging / mask_name, np.uint8)
        names = [prob_name, mask_name]
        record = {"threshold": threshold}
        if uncertainty is not None:
            maps_name, lesions_name = UNCERTAINTY_FILES
            stacked = np.stack([uncertainty["entropy"], uncertainty["mutual_information"]], -1)
            save_nifti_like(stacked, geometry, staging / maps_name, np.float32)
            write_json({"threshold": threshold, "connectivity": 26,
                        "sorted_by": "mean_entropy, descending",
                        "lesions": lesion_table(mask, geometry.affine, probability,
                                                uncertainty)},
                       staging / lesions_name)
            names += [maps_name, lesions_name]
            record["uncertainty"] = {"volumes": list(UNCERTAINTY_VOLUMES),
                                     "members": uncertainty.get("members")}
        with _publishing_claim(out_dir) as claim:
            (out_dir / MANIFEST).unlink(missing_ok=True)
            for name in (mask_name, *UNCERTAINTY_FILES, prob_name):
                (out_dir / name).unlink(missing_ok=True)
            for name in names:
                (staging / name).replace(out_dir / name)
            claim.ensure_held()
            write_json({"files": names, **record, **(about or {})}, out_dir / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / prob_name, out_dir / mask_name
