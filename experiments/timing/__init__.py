"""sycam's performance benchmark suite: sycam side by side with its peers, in one run.

Entry point: ``python -m experiments.timing.run [--quick] [--device cpu|cuda] [--threads N]``
(see ``experiments/timing/README.md``). Every figure is a median over interleaved repeats, with
min and max, and every comparison is a ratio of timings taken in the same run, so that a loaded,
shared machine slows every contender alike. Sections:

1. ``explain``: explain throughput of Grad-CAM, Grad-CAM++, LayerCAM and Score-CAM against
   pytorch-grad-cam, torchcam, captum and a bare forward + ``autograd.grad`` (the floor);
2. ``multilayer``: Winsor-CAM over every conv layer against pytorch-grad-cam with the same
   layers: passes (counted with hooks), time, peak RSS (one subprocess per measurement);
3. ``search``: candidate programs scored per second on cached captures against the naive loop
   that recomputes the forward and backward pass per candidate;
4. ``scale``: peak RSS of streaming a program + metric over 1k and 10k images;
5. ``profile``: torch.profiler and cProfile of (1) Grad-CAM explain and (3) search scoring.
"""
