"""Training step: our U-Net + TverskyLoss + Adam + metrics vs the same network in PyTorch + MONAI.

Ours is compiled as ``tversky_keras.training`` compiles it (paper optimizer,
``TverskyLoss``, the five lesion metrics) and stepped with ``train_on_batch``
on tensors already in memory; the peer is ``TorchUNet3d`` (same layers and
parameter count) with MONAI's ``TverskyLoss`` and ``torch.optim.Adam``. The
achieved GFLOP/s count the convolutions' FLOPs (``benchmarks.flops``).
"""

import keras
import tensorflow as tf

from benchmarks.flops import training_flops
from benchmarks.measure import Row, machine, median_seconds, synthetic_batch
from benchmarks.peers import channel_first, torch_on_cpu_like_tensorflow
from benchmarks.workload import ALPHA, BETA, CHANNELS, PAPER_INPUT, compiled_model, network, profile_config

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
    image, label = (tf.constant(a) for a in synthetic_batch(batch, spatial, CHANNELS))
    # Two warm-up steps: the first traces the step function, the second settles memory.
    seconds, _ = median_seconds(lambda: model.train_on_batch(image, label), repeats,
                                warmup=2, budget_s=budget_s)
    return seconds, model


def monai_step_seconds(keras_network, config, batch, spatial, repeats, budget_s=None, device="cpu"):
    """Median seconds of one step of the PyTorch twin with MONAI's Tversky loss and Adam."""
    from monai.losses import TverskyLoss

    from benchmarks.torch_unet import twin_of

    torch = torch_on_cpu_like_tensorflow()
    twin = twin_of(keras_network).to(device)
    optimizer = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
    # MONAI's alpha weighs false positives, as ours does.
    loss = TverskyLoss(include_background=False, alpha=ALPHA, beta=BETA)
    image, label = (channel_first(a, device) for a in synthetic_batch(batch, spatial, CHANNELS))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(twin(image), label).backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    seconds, _ = median_seconds(step, repeats, warmup=1, budget_s=budget_s)
    return seconds


def step_rows(label, config, batch, spatial, opts):
    """Seconds, voxels/s and GFLOP/s of ours and of the peer at one input shape."""
    ours, model = keras_step_seconds(config, batch, spatial, opts.repeats, opts.budget_s)
    peer = (monai_step_seconds(network(model), config, batch, spatial, opts.repeats, opts.budget_s)
            if opts.peers else None)
    voxels = batch * spatial[0] * spatial[1] * spatial[2]
    flops = training_flops(network(model), (batch, *spatial, CHANNELS))
    cpu = machine()

    def share(seconds):
        gflops = flops / seconds / 1e9
        return (f"{gflops / cpu['fp32_peak_gflops']:.0%} of {cpu['fp32_peak_gflops']:.0f} "
                f"(AVX2), {gflops / cpu['fp32_peak_gflops_avx512']:.0%} of "
                f"{cpu['fp32_peak_gflops_avx512']:.0f} (AVX-512)")

    net = f"{config.base_filters} filters, depth {config.depth}"
    shape = f"{batch}x{'x'.join(map(str, spatial))}x{CHANNELS}"
    peer_name = "PyTorch + MONAI"
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
    return rows, ours


def variant_rows(config, batch, spatial, baseline, opts):
    """Ours at the quick shape without metrics, under mixed bfloat16, and with XLA."""
    shape = f"{batch}x{'x'.join(map(str, spatial))}x{CHANNELS}"
    variants = [("no metrics attached", dict(metrics=False)),
                ("mixed_bfloat16 policy", dict(policy="mixed_bfloat16")),
                ("XLA (jit_compile=True)", dict(jit_compile=True))]
    rows = []
    for name, options in variants:
        seconds, _ = keras_step_seconds(config, batch, spatial, opts.variant_repeats,
                                        opts.budget_s, **options)
        rows.append(Row(SECTION, f"quick {shape}, ours: {name}", seconds, "s/step",
                        baseline, "ours, fp32 + metrics (above)"))
    return rows


def run(opts):
    """Rows of this section; ``opts`` as built by ``benchmarks.__main__``."""
    quick = profile_config("quick")
    rows, quick_seconds = step_rows("quick profile", quick, quick.batch_size, quick.patch_size, opts)
    if opts.variants:
        rows += variant_rows(quick, quick.batch_size, quick.patch_size, quick_seconds, opts)
    paper_seconds = None
    if opts.paper_shape:
        paper = profile_config("paper")
        paper_rows, paper_seconds = step_rows("paper input", paper, 1, PAPER_INPUT, opts)
        rows += paper_rows
    return {"rows": rows, "quick_step_s": quick_seconds, "paper_step_s": paper_seconds}
