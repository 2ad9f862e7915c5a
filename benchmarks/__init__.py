"""Benchmarks of tversky-keras against PyTorch + MONAI and Keras' own Tversky loss.

``python -m benchmarks`` runs, on this machine's CPU:

- ``bench_training``: a training step of our U-Net + TverskyLoss + Adam + metrics
  vs the same network (``torch_unet``) with MONAI's TverskyLoss, and its
  achieved convolution GFLOP/s against the CPU's fp32 peak (``flops``);
- ``bench_input``: ``make_dataset``'s batches/s vs the training step's appetite;
- ``bench_loss``: forward + backward of the loss vs ``keras.losses.Tversky`` and
  MONAI, with the values side by side;
- ``bench_inference``: sliding-window inference of a 1-mm brain vs MONAI's;
- ``bench_process``: peak memory and ``model.fit`` step time of a
  quick-profile training process (``train_process``).

``python -m benchmarks --gpu`` times the paper's input on a GPU (``gpu``).
Results and the machine's description: ``RESULTS.md``.
"""
