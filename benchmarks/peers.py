"""The peer the suite compares with: PyTorch + MONAI, when installed (``pip install .[bench]``)."""

import os

INSTALL_HINT = "pip install torch==2.13.0 monai  (or: pip install .[bench])"


def peer_problem():
    """``None`` when PyTorch and MONAI import, else why the peer rows are skipped."""
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        return f"PyTorch/MONAI rows skipped: {error}. Install them with: {INSTALL_HINT}"
    return None


def torch_on_cpu_like_tensorflow():
    """PyTorch with as many intra-op threads as TensorFlow's default (one per core)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    return torch


def channel_first(array, device="cpu"):
    """A channel-last numpy array ``(B, X, Y, Z, C)`` as a PyTorch ``(B, C, X, Y, Z)`` tensor."""
    import torch

    return torch.from_numpy(array.transpose(0, 4, 1, 2, 3).copy()).to(device)
