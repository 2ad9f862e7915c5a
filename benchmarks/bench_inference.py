"""Whole-brain sliding-window inference: our ``predict_volume`` vs MONAI's ``sliding_window_inference``.

One 1-mm brain ``182x218x182x3``, the same windows, overlap and Gaussian
blending on both sides, and the same network with the same weights (copied
into the PyTorch twin), so the two probability maps must agree. Ours blends
the windows on the device (the default); a second row times the older loop
that takes each window through the host.
"""

import math

import numpy as np

from benchmarks.measure import Row, median_seconds
from benchmarks.peers import channel_first, torch_on_cpu_like_tensorflow
from benchmarks.workload import CHANNELS, MNI_1MM, network, profile_config, random_image
from tversky_keras.inference import predict_volume, window_starts
from tversky_keras.training import build_model

SECTION = "inference"
OVERLAP = 0.5


def window_count(shape, window, overlap=OVERLAP):
    steps = [max(1, int(round(w * (1 - overlap)))) for w in window]
    return math.prod(len(window_starts(s, w, st)) for s, w, st in zip(shape, window, steps))


def run(opts, profile="quick", device="cpu", peers=None, whole_volume=False, shape=None,
        window=None):
    """Seconds per scan of ours and MONAI, and the largest difference between their maps.

    ``peers`` overrides ``opts.peers``; ``device`` is where PyTorch runs;
    ``whole_volume`` adds a row for ours on the whole (padded) scan in one call;
    ``shape`` (default a 1-mm MNI brain) and ``window`` (default ``opts.window``)
    make a smaller run.
    """
    config = profile_config(profile)
    model = build_model(config)
    shape = tuple(shape or MNI_1MM)
    window = (window or opts.window,) * 3
    image = random_image(shape)

    def ours_scan(device_windows=True):
        return predict_volume(model, image, window=window, overlap=OVERLAP, blend="gaussian",
                              batch_size=1, multiple_of=2**config.depth,
                              device_windows=device_windows)

    ours, _ = median_seconds(ours_scan, opts.scan_repeats, budget_s=opts.budget_s)
    host, _ = median_seconds(lambda: ours_scan(device_windows=False), opts.scan_repeats,
                             budget_s=opts.budget_s)
    windows = window_count(shape, window)
    # One window through the call predict_volume makes for each window: its share of a scan.
    patch = np.zeros((1, *window, CHANNELS), np.float32)
    call, _ = median_seconds(lambda: model.predict_on_batch(patch), opts.repeats)
    net = f"{config.base_filters} filters, depth {config.depth}"
    label = f"{'x'.join(map(str, shape))}x{CHANNELS}, window {window[0]}^3 x{windows}, {net}"
    note = f"ours: model calls {windows * call / ours:.0%} of the time"
    peer, agreement = None, None
    if opts.peers if peers is None else peers:
        peer, peer_call, agreement = _monai(model, image, window, ours_scan(), opts, device)
        note += (f"; MONAI: model calls {windows * peer_call / peer:.0%}; "
                 f"max |ours - MONAI| = {agreement:.1e}")
    peer_name = "MONAI sliding_window_inference" if peer is not None else ""
    rows = [Row(SECTION, label, ours, "s/scan", peer, peer_name, note),
            Row(SECTION, f"{label}, ours with each window through the host "
                         f"(device_windows=False)", host, "s/scan", ours,
                "ours, windows on the device (above)")]
    if whole_volume:
        whole, _ = median_seconds(
            lambda: predict_volume(model, image, window=None, multiple_of=2**config.depth),
            opts.scan_repeats, budget_s=opts.budget_s)
        rows.append(Row(SECTION, f"{'x'.join(map(str, shape))}x{CHANNELS}, whole volume in one "
                                 f"call, {net}", whole, "s/scan", ours, "ours, windows (above)"))
    return {"rows": rows, "max_abs_difference": agreement, "windows": windows}


def _monai(model, image, window, ours_probabilities, opts, device):
    from monai.inferers import sliding_window_inference

    from benchmarks.torch_unet import copy_keras_weights, twin_of

    torch = torch_on_cpu_like_tensorflow()
    twin = copy_keras_weights(network(model), twin_of(network(model))).to(device).eval()
    volume = channel_first(image[None], device)
    patch = torch.zeros((1, CHANNELS, *window), device=device)

    def synchronized(function):
        def call():
            with torch.inference_mode():
                out = function()
            if device != "cpu":
                torch.cuda.synchronize()
            return out
        return call

    scan = synchronized(lambda: sliding_window_inference(
        volume, roi_size=window, sw_batch_size=1, predictor=twin, overlap=OVERLAP,
        mode="gaussian"))
    seconds, _ = median_seconds(scan, opts.scan_repeats, budget_s=opts.budget_s)
    call, _ = median_seconds(synchronized(lambda: twin(patch)), opts.repeats)
    theirs = scan()[0].permute(1, 2, 3, 0).cpu().numpy()
    return seconds, call, float(np.abs(theirs - ours_probabilities).max())
