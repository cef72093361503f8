"""The kernel layer: packed binary codes and their text forms over the C++ core, for numpy
arrays and torch tensors, and the same operations as ``torch.library`` ops.

* :mod:`~binllm.kernels.codes`: the public functions (``binllm.pack_signs``, ``binllm.topk``, ...);
  CPU/CUDA tensors go through the torch ops, so they trace under ``torch.compile``;
* :mod:`~binllm.kernels.eager`: the same operations run at once on the inputs' backend;
* :mod:`~binllm.kernels.dispatch`: the one place a backend is chosen (``cpu`` or ``cuda`` by
  device, ``require_backend``), and ``build_info``;
* :mod:`~binllm.kernels.cpu`, :mod:`~binllm.kernels.cuda`: the two backends, the same functions
  over ``binllm._core`` and ``binllm._cuda_ext``;
* :mod:`~binllm.kernels.arrays`: whole-number arguments, tensors recognised without torch, views;
* :mod:`~binllm.kernels.textcodes`: codes as bit strings and dotted decimal;
* :mod:`~binllm.kernels.torch_ops`: the custom ops (also ``binllm.torch_ops``), and the
  straight-through sign.

May import: numpy, the extensions and the leaves (``binllm._types``, ``binllm.threads``); torch
only in ``cuda`` and ``torch_ops``, which load when a tensor needs them.
"""
