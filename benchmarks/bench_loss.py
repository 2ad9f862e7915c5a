"""Loss overhead: forward + backward of our TverskyLoss vs keras.losses.Tversky and MONAI's.

All three see the same softmax probabilities of a 1-mm brain,
``(1, 182, 218, 182, 2)``, and a one-hot truth. Where the definitions agree
they give the same value: ours with ``include_background=False``, MONAI's with
``include_background=False`` (channel-first) and the same smoothing, and
Keras' on the lesion channel alone with its coefficients swapped (see
``keras_alpha_weighs``).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import losses as keras_losses

from benchmarks.measure import Row, median_seconds
from benchmarks.peers import channel_first, torch_on_cpu_like_tensorflow
from benchmarks.workload import ALPHA, BETA, MNI_1MM, random_lesions
from tversky_keras.losses import TverskyLoss

SECTION = "loss fwd+bwd"
SMOOTH = 1e-5  # MONAI's default smooth_nr = smooth_dr; ours adds it to both too


def keras_alpha_weighs():
    """Which error the installed ``keras.losses.tversky``'s ``alpha`` weighs.

    Truth ``[1, 1, 0, 0]``, prediction ``[1, 0, 1, 1]``: TP = 1, FN = 1,
    FP = 2. With ``alpha=1, beta=0`` the loss is ``1 - 1/(1 + 2) = 2/3`` if
    alpha weighs false positives (the paper) and ``1 - 1/(1 + 1) = 1/2`` if it
    weighs false negatives.

    Returns:
        ``("false positives" | "false negatives", loss value)``.
    """
    truth = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    prediction = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    value = float(keras_losses.tversky(truth, prediction, alpha=1.0, beta=0.0))
    if abs(value - 2 / 3) < 1e-4:
        return "false positives", value
    if abs(value - 1 / 2) < 1e-4:
        return "false negatives", value
    raise AssertionError(f"keras.losses.tversky gave {value}, neither 2/3 nor 1/2")


def brain_probabilities(seed=0):
    """Softmax probabilities and one-hot truth of a 1-mm brain, ~0.5% lesion voxels."""
    rng = np.random.default_rng(seed)
    lesion = random_lesions(MNI_1MM, 0.005, rng)
    p = np.clip(np.where(lesion, 0.7, 0.05) + 0.1 * rng.normal(size=MNI_1MM), 0.0, 1.0)
    probabilities = np.stack([1 - p, p], axis=-1)[None].astype(np.float32)
    truth = np.eye(2, dtype=np.float32)[lesion.astype(np.int64)][None]
    return truth, probabilities


def _tf_value_and_gradient(loss):
    @tf.function
    def step(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = loss(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    return step


def run(opts):
    """Timing rows, plus the loss values side by side and Keras' convention."""
    convention, probe = keras_alpha_weighs()
    truth, probabilities = brain_probabilities()
    y_true, y_pred = tf.constant(truth), tf.constant(probabilities)
    ours_loss = TverskyLoss(alpha=ALPHA, beta=BETA, smooth=SMOOTH)
    # Keras' index pools every axis and channel: feed it the lesion channel only,
    # with (alpha, beta) swapped when its alpha weighs false negatives.
    swapped = convention == "false negatives"
    keras_loss = keras_losses.Tversky(alpha=BETA if swapped else ALPHA,
                                      beta=ALPHA if swapped else BETA)

    def lesion_only(y_true, y_pred):
        return keras_loss(y_true[..., 1:], y_pred[..., 1:])

    ours_step, keras_step = _tf_value_and_gradient(ours_loss), _tf_value_and_gradient(lesion_only)
    # A tf.function call on the CPU returns when its outputs are computed.
    ours, _ = median_seconds(lambda: ours_step(y_true, y_pred), opts.repeats)
    theirs, _ = median_seconds(lambda: keras_step(y_true, y_pred), opts.repeats)
    values = {
        "ours TverskyLoss(alpha, beta)": float(ours_step(y_true, y_pred)[0]),
        f"keras.losses.Tversky({'beta, alpha' if swapped else 'alpha, beta'}) on lesion channel":
            float(keras_step(y_true, y_pred)[0]),
        "keras.losses.Tversky(alpha, beta) as documented, lesion channel":
            float(keras_losses.Tversky(alpha=ALPHA, beta=BETA)(y_true[..., 1:], y_pred[..., 1:])),
    }
    shape = "x".join(map(str, probabilities.shape))
    rows = [Row(SECTION, f"{shape} probabilities vs keras.losses.Tversky", ours, "s", theirs,
                f"Keras {keras.__version__}", "tf.function, value + gradient")]
    if opts.peers:
        monai_seconds, values["MONAI TverskyLoss(alpha, beta)"] = _monai(truth, probabilities, opts)
        rows.append(Row(SECTION, f"{shape} probabilities vs MONAI TverskyLoss", ours, "s",
                        monai_seconds, "MONAI", "eager PyTorch, value + gradient"))
    return {"rows": rows, "values": values, "keras_alpha_weighs": convention,
            "keras_probe_value": probe, "alpha": ALPHA, "beta": BETA, "smooth": SMOOTH}


def _monai(truth, probabilities, opts):
    from monai.losses import TverskyLoss as MonaiTversky

    torch_on_cpu_like_tensorflow()
    loss = MonaiTversky(include_background=False, alpha=ALPHA, beta=BETA,
                        smooth_nr=SMOOTH, smooth_dr=SMOOTH)
    y_true = channel_first(truth)
    y_pred = channel_first(probabilities).requires_grad_(True)

    def step():
        y_pred.grad = None
        value = loss(y_pred, y_true)
        value.backward()
        return float(value.detach())

    seconds, _ = median_seconds(step, opts.repeats)
    return seconds, step()
