"""Training step: our U-Net + TverskyLoss + Adam + metrics vs the same network in PyTorch + MONAI.

Ours is compiled as ``tversky_keras.training`` compiles it (paper optimizer,
``TverskyLoss``, the five lesion metrics) and stepped with ``train_on_batch``
on tensors already in memory; the peer is ``TorchUNet3d`` (same layers and
parameter count) with MONAI's ``TverskyLoss`` and ``torch.optim.Adam``. The
achieved GFLOP/s count the convolutions' FLOPs (``benchmarks.flops``).
"""

import contextlib

import keras

from benchmarks.flops import training_flops
from benchmarks.measure import Row, machine, median_seconds
from benchmarks.peers import channel_first, torch_on_cpu_like_tensorflow
from benchmarks.workload import (ALPHA, BETA, CHANNELS, PAPER_INPUT, compiled_model, network,
                                 paper_grid_steps, profile_config, synthetic_batch)

SECTION = "training step"


def keras_step_seconds(config, batch, spatial, repeats, budget_s=None, policy=None, **compile_options):
    """Median seconds of one ``train_on_batch`` step, and the model.

    Args:
        policy: a Keras dtype policy to build the model under (e.g.
            ``"mixed_float16"``); the global policy is restored afterwards.
        compile_options: passed to ``compiled_model`` (``metrics``, ``jit_compile``).
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy or previous)
    try:
        model = compiled_model(config, **compile_options)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    image, label = (keras.ops.convert_to_tensor(a) for a in synthetic_batch(batch, spatial, CHANNELS))
    # Two warm-up steps: the first traces the step function, the second settles memory.
    seconds, _ = median_seconds(lambda: model.train_on_batch(image, label), repeats,
                                warmup=2, budget_s=budget_s)
    return seconds, model


def monai_step_seconds(keras_network, config, batch, spatial, repeats, budget_s=None, device="cpu",
                       autocast=None):
    """Median seconds of one step of the PyTorch twin with MONAI's Tversky loss and Adam.

    ``autocast``: a torch dtype (``torch.bfloat16``) to run the forward pass and
    the loss under ``torch.autocast``, PyTorch's mixed precision; float16 also
    scales the loss (``torch.amp.GradScaler``), as Keras' ``mixed_float16`` does.
    """
    from monai.losses import TverskyLoss

    from benchmarks.torch_unet import twin_of

    torch = torch_on_cpu_like_tensorflow()
    twin = twin_of(keras_network).to(device)
    optimizer = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
    # MONAI's alpha weighs false positives, as ours does.
    loss = TverskyLoss(include_background=False, alpha=ALPHA, beta=BETA)
    image, label = (channel_first(a, device) for a in synthetic_batch(batch, spatial, CHANNELS))

    scaler = torch.amp.GradScaler(device, enabled=autocast == torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with (torch.autocast(device, dtype=autocast) if autocast else contextlib.nullcontext()):
            value = loss(twin(image), label)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        if device != "cpu":
            torch.cuda.synchronize()

    seconds, _ = median_seconds(step, repeats, warmup=1, budget_s=budget_s)
    return seconds


def step_rows(label, config, batch, spatial, opts, gemm_gflops=None):
    """Seconds, voxels/s and GFLOP/s of ours and of the peer at one input shape.

    The GFLOP/s are also given as a share of the nominal fp32 peaks and of
    ``gemm_gflops``, TensorFlow's measured matrix-product rate.
    """
    ours, model = keras_step_seconds(config, batch, spatial, opts.repeats, opts.budget_s)
    peer = (monai_step_seconds(network(model), config, batch, spatial, opts.repeats, opts.budget_s)
            if opts.peers else None)
    voxels = batch * spatial[0] * spatial[1] * spatial[2]
    flops = training_flops(network(model), (batch, *spatial, CHANNELS))
    cpu = machine()

    def share(seconds):
        gflops = flops / seconds / 1e9
        text = (f"{gflops / cpu['fp32_peak_gflops']:.0%} of {cpu['fp32_peak_gflops']:.0f} "
                f"(AVX2), {gflops / cpu['fp32_peak_gflops_avx512']:.0%} of "
                f"{cpu['fp32_peak_gflops_avx512']:.0f} (AVX-512)")
        return text + (f", {gflops / gemm_gflops:.0%} of GEMM" if gemm_gflops else "")

    net = f"{config.base_filters} filters, depth {config.depth}"
    shape = f"{batch}x{'x'.join(map(str, spatial))}x{CHANNELS}"
    peer_name = "PyTorch + MONAI" if peer else ""
    rows = [
        Row(SECTION, f"{label} {shape}, {net}: time", ours, "s/step", peer, peer_name,
            "median after warm-up"),
        Row(SECTION, f"{label}: throughput", voxels / ours / 1e6, "Mvoxel/s",
            peer and voxels / peer / 1e6, peer_name),
        Row(SECTION, f"{label}: conv GFLOP/s (train = 3x fwd)", flops / ours / 1e9, "GFLOP/s",
            peer and flops / peer / 1e9, peer_name,
            f"{flops / 1e9:.0f} GFLOP/step; ours {share(ours)}"
            + (f"; peer {share(peer)}" if peer else "")),
    ]
    return rows, ours, peer


QUICK_VARIANTS = (("no metrics attached", dict(metrics=False)),
                  ("mixed_bfloat16 policy", dict(policy="mixed_bfloat16")),
                  ("XLA (jit_compile=True)", dict(jit_compile=True)))
PAPER_VARIANTS = QUICK_VARIANTS[1:2]  # XLA's compile alone would take minutes there


def variant_rows(label, config, batch, spatial, baseline, variants, opts):
    """Ours with other compile options, against the fp32 + metrics step at the same shape."""
    rows = []
    for name, options in variants:
        seconds, _ = keras_step_seconds(config, batch, spatial, opts.variant_repeats,
                                        opts.budget_s, **options)
        rows.append(Row(SECTION, f"{label}, ours: {name}", seconds, "s/step",
                        baseline, "ours, fp32 + metrics (above)"))
    return rows


def gemm_row(opts, n=4096):
    """fp32 matrix product of two n x n matrices: the attainable peak of each framework."""
    import tensorflow as tf

    a, b = (tf.random.normal((n, n), seed=seed) for seed in (1, 2))
    product = tf.function(tf.linalg.matmul)
    ours, _ = median_seconds(lambda: product(a, b), opts.repeats // 2 or 1)
    peer = None
    if opts.peers:
        torch = torch_on_cpu_like_tensorflow()
        ta, tb = (torch.from_numpy(m.numpy()) for m in (a, b))
        peer, _ = median_seconds(lambda: ta @ tb, opts.repeats // 2 or 1)
    flops = 2 * n**3
    return Row(SECTION, f"fp32 GEMM {n}x{n} (attainable peak)", flops / ours / 1e9, "GFLOP/s",
               peer and flops / peer / 1e9, "PyTorch (MKL)" if peer else "", "TensorFlow: oneDNN/Eigen")


def run(opts):
    """Rows of this section; ``opts`` as built by ``benchmarks.__main__``."""
    gemm = gemm_row(opts)
    rows = [gemm]
    quick = profile_config("quick")
    quick_rows, quick_seconds, quick_peer = step_rows("quick profile", quick, quick.batch_size,
                                                      quick.patch_size, opts, gemm.ours)
    rows += quick_rows
    if opts.variants:
        variants = variant_rows("quick profile", quick, quick.batch_size, quick.patch_size,
                                quick_seconds, QUICK_VARIANTS, opts)
        rows += variants
        if quick_peer:
            # The peer's step computes no metrics: like for like is ours without them.
            rows.append(Row(SECTION, "quick profile, like for like: ours without metrics vs "
                                     "PyTorch + MONAI (whose step computes none)",
                            next(r.ours for r in variants if r.measure.endswith("no metrics "
                                                                                 "attached")),
                            "s/step", quick_peer, "PyTorch + MONAI",
                            "both: loss + Adam only"))
    paper_seconds = None
    if opts.paper_shape:
        paper = profile_config("paper")
        paper_rows, paper_seconds, _ = step_rows("paper input", paper, 1, PAPER_INPUT, opts,
                                                 gemm.ours)
        rows += paper_rows
        grid = paper_grid_steps()
        rows.append(Row(SECTION, f"paper grid on this CPU: {grid} steps at the paper-input step",
                        grid * paper_seconds / 86400, "days", note="training only, fp32"))
        if opts.variants:
            rows += variant_rows("paper input", paper, 1, PAPER_INPUT, paper_seconds,
                                 PAPER_VARIANTS, opts)
    return {"rows": rows, "quick_step_s": quick_seconds, "paper_step_s": paper_seconds}
