"""Which aten ops PyTorch documents as nondeterministic on CUDA: the table the op scan matches.

Source: the docstring of ``torch.use_deterministic_algorithms`` in torch 2.14.1 (the newest
torch this project supports), which lists the "normally-nondeterministic operations" in two
categories: those that ``use_deterministic_algorithms(True)`` switches to a deterministic
implementation (:data:`MADE_DETERMINISTIC`) and those that raise under it because no
deterministic implementation exists (:data:`RAISES`). Each :class:`Entry` repeats the
docstring's bullet (``doc``) and names the aten ops (as a ``TorchDispatchMode`` sees them, in
the forward or the backward pass) that implement it; ``tests/test_cuda_ops.py`` checks that
every bullet of the installed torch's docstring has an entry here, so a torch upgrade that adds
one fails there.

cuDNN convolutions and cuBLAS matrix products are library-level settings rather than single
kernels: convolutions follow ``torch.backends.cudnn.deterministic`` / ``benchmark`` (which the
determinism audit's knobs attribute), and cuBLAS needed ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
under deterministic algorithms until torch stopped asking for it (its docstring names the
variable while the requirement stands: :func:`cublas_workspace_required`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

MADE_DETERMINISTIC = "made_deterministic"
RAISES = "raises"
CATEGORIES = (MADE_DETERMINISTIC, RAISES)

SOURCE = ("torch.use_deterministic_algorithms docstring (torch 2.14.1): its lists of operations "
          "made deterministic and of operations that raise under use_deterministic_algorithms(True)")


def _arg(name: str, default: Any = None) -> Callable[..., Any]:
    return lambda a: a.get(name, default)


def _index_put_values(a: dict[str, Any]) -> bool:
    """``index_put`` without accumulation: nondeterministic when indices repeat; a boolean
    mask cannot repeat, so mask assignments are left out."""
    if a.get("accumulate", False):
        return False
    indices = [i for i in (a.get("indices") or []) if i is not None]
    return not all(str(getattr(i, "dtype", "")) in ("torch.bool", "torch.uint8") for i in indices)


def _floating_or_complex(a: dict[str, Any]) -> bool:
    dtype = a.get("dtype") or getattr(a.get("self"), "dtype", None)
    return dtype is not None and (dtype.is_floating_point or dtype.is_complex)


def _sparse_operand(a: dict[str, Any]) -> bool:
    return any(getattr(a.get(k), "is_sparse", False) for k in ("self", "mat2"))


@dataclass(frozen=True)
class Entry:
    """One docstring bullet: the aten ops behind it and when they are nondeterministic."""

    key: str
    doc: str  # the docstring's words
    category: str  # MADE_DETERMINISTIC | RAISES
    ops: tuple[Any, ...]  # aten overload-packet names, e.g. ("index_add", "index_add_")
    cuda: bool = True  # False: the docstring names the CPU only (not part of the CUDA scan)
    backward_of: Optional[tuple[Any, ...]] = None  # autograd node names: only as their backward
    when: Optional[Callable[..., Any]] = None  # named arguments -> bool (the bullet's condition)
    covered_by: Optional[str] = None  # seen as another entry's ops (no aten op of its own)


_E = Entry
ENTRIES = (
    # --- made deterministic by use_deterministic_algorithms(True)
    _E("convolution", "torch.nn.Conv1d/2d/3d and torch.nn.ConvTranspose1d/2d/3d when called on "
       "CUDA tensor", MADE_DETERMINISTIC, (), covered_by="cudnn"),
    _E("replication_pad_backward", "torch.nn.ReplicationPad1d/2d/3d when attempting to "
       "differentiate a CUDA tensor", MADE_DETERMINISTIC,
       ("replication_pad1d_backward", "replication_pad2d_backward", "replication_pad3d_backward")),
    _E("bmm_sparse", "torch.bmm when called on sparse-dense CUDA tensors", MADE_DETERMINISTIC,
       ("bmm",), when=_sparse_operand),
    _E("cumsum", "torch.cumsum when called on a CUDA tensor when dtype is floating point or "
       "complex", MADE_DETERMINISTIC, ("cumsum", "cumsum_"), when=_floating_or_complex),
    _E("getitem_backward_cpu", "torch.Tensor.__getitem__ when attempting to differentiate a CPU "
       "tensor and the index is a list of tensors", MADE_DETERMINISTIC, ("index_put",),
       cuda=False, backward_of=("IndexBackward0",)),
    _E("index_put", "torch.Tensor.index_put with accumulate=False", MADE_DETERMINISTIC,
       ("index_put", "index_put_", "_index_put_impl_"), when=_index_put_values),
    _E("index_put_accumulate_cpu", "torch.Tensor.index_put with accumulate=True when called on "
       "a CPU tensor", MADE_DETERMINISTIC, ("index_put", "index_put_"), cuda=False),
    _E("put_accumulate_cpu", "torch.Tensor.put_ with accumulate=True when called on a CPU tensor",
       MADE_DETERMINISTIC, ("put_", "put"), cuda=False),
    _E("gather_backward", "torch.gather when called on a CUDA tensor that requires grad",
       MADE_DETERMINISTIC, ("scatter_add", "scatter_add_"), backward_of=("GatherBackward0",)),
    _E("scatter_add", "torch.Tensor.scatter_add_ when called on a CUDA tensor",
       MADE_DETERMINISTIC, ("scatter_add", "scatter_add_")),
    _E("index_select_backward", "torch.index_select when attempting to differentiate a CUDA "
       "tensor", MADE_DETERMINISTIC, ("index_add", "index_add_"),
       backward_of=("IndexSelectBackward0",)),
    _E("repeat_interleave_backward", "torch.repeat_interleave when attempting to differentiate "
       "a CUDA tensor", MADE_DETERMINISTIC, (), covered_by="index_select_backward"),
    _E("index_add", "torch.index_add when called on CUDA tensor", MADE_DETERMINISTIC,
       ("index_add", "index_add_")),
    _E("index_copy", "torch.Tensor.index_copy when called on a CPU or CUDA tensor",
       MADE_DETERMINISTIC, ("index_copy", "index_copy_")),
    _E("scatter_src", "torch.Tensor.scatter when src type is Tensor and called on CUDA tensor",
       MADE_DETERMINISTIC, ("scatter", "scatter_"), when=lambda a: "src" in a),
    _E("scatter_reduce_sum_mean", "torch.Tensor.scatter_reduce when reduce='sum' or "
       "reduce='mean' and called on CUDA tensor", MADE_DETERMINISTIC,
       ("scatter_reduce", "scatter_reduce_"), when=lambda a: a.get("reduce") in ("sum", "mean")),
    _E("max_pool3d_backward", "torch.nn.MaxPool3d when attempting to differentiate a CUDA "
       "tensor", MADE_DETERMINISTIC, ("max_pool3d_with_indices_backward",)),
    _E("embedding_backward", "torch.nn.Embedding when attempting to differentiate a CUDA tensor",
       MADE_DETERMINISTIC, ("embedding_dense_backward",)),
    # --- raise under use_deterministic_algorithms(True): no deterministic implementation
    _E("avg_pool3d_backward", "torch.nn.AvgPool3d when attempting to differentiate a CUDA "
       "tensor", RAISES, ("avg_pool3d_backward",)),
    _E("adaptive_avg_pool2d_backward", "torch.nn.AdaptiveAvgPool2d when attempting to "
       "differentiate a CUDA tensor", RAISES, ("_adaptive_avg_pool2d_backward",)),
    _E("adaptive_avg_pool3d_backward", "torch.nn.AdaptiveAvgPool3d when attempting to "
       "differentiate a CUDA tensor", RAISES, ("_adaptive_avg_pool3d_backward",)),
    _E("adaptive_max_pool2d_backward", "torch.nn.AdaptiveMaxPool2d when attempting to "
       "differentiate a CUDA tensor", RAISES, ("adaptive_max_pool2d_backward",)),
    _E("fractional_max_pool_backward", "torch.nn.FractionalMaxPool2d/3d when attempting to "
       "differentiate a CUDA tensor", RAISES,
       ("fractional_max_pool2d_backward", "fractional_max_pool3d_backward")),
    _E("max_unpool", "torch.nn.MaxUnpool1d/2d/3d", RAISES, ("max_unpool2d", "max_unpool3d")),
    _E("interpolate_backward", "torch.nn.functional.interpolate when attempting to "
       "differentiate a CUDA tensor and one of the modes linear, bilinear, bicubic, trilinear "
       "is used", RAISES,
       ("upsample_linear1d_backward", "upsample_bilinear2d_backward",
        "upsample_bicubic2d_backward", "upsample_trilinear3d_backward",
        "_upsample_bilinear2d_aa_backward", "_upsample_bicubic2d_aa_backward")),
    _E("reflection_pad_backward", "torch.nn.ReflectionPad1d/2d/3d when attempting to "
       "differentiate a CUDA tensor", RAISES,
       ("reflection_pad1d_backward", "reflection_pad2d_backward", "reflection_pad3d_backward")),
    _E("nll_loss", "torch.nn.NLLLoss when called on a CUDA tensor", RAISES,
       ("nll_loss2d_forward",), when=lambda a: a.get("reduction", 1) != 0),
    _E("ctc_loss_backward", "torch.nn.CTCLoss when attempting to differentiate a CUDA tensor",
       RAISES, ("_ctc_loss_backward",)),
    _E("embedding_bag_max_backward", "torch.nn.EmbeddingBag when attempting to differentiate a "
       "CUDA tensor when mode='max'", RAISES,
       ("_embedding_bag_backward", "_embedding_bag_dense_backward"),
       when=lambda a: a.get("mode") == 2),
    _E("put", "torch.Tensor.put_ when accumulate=False, or accumulate=True on a CUDA tensor",
       RAISES, ("put_", "put")),
    _E("histc", "torch.histc when called on a CUDA tensor", RAISES, ("histc",)),
    _E("bincount_weights", "torch.bincount when called on a CUDA tensor and weights tensor is "
       "given", RAISES, ("bincount",), when=lambda a: a.get("weights") is not None),
    _E("median_indices", "torch.median with indices output when called on a CUDA tensor",
       RAISES, ("median",), when=lambda a: "dim" in a),
    _E("grid_sample_backward", "torch.nn.functional.grid_sample when attempting to "
       "differentiate a CUDA tensor", RAISES,
       ("grid_sampler_2d_backward", "grid_sampler_3d_backward", "cudnn_grid_sampler_backward")),
    _E("scatter_reduce_prod", "torch.Tensor.scatter_reduce when reduce='prod' and called on "
       "CUDA tensor", RAISES, ("scatter_reduce", "scatter_reduce_"),
       when=lambda a: a.get("reduce") == "prod"),
    _E("resize_quantized", "torch.Tensor.resize_ when called with a quantized tensor", RAISES,
       ("resize_",), when=lambda a: getattr(a.get("self"), "is_quantized", False)),
)
BY_KEY = {e.key: e for e in ENTRIES}

#: Library-level: aten ops served by cuDNN convolutions and by cuBLAS on CUDA.
CUDNN_OPS = frozenset({"convolution", "convolution_backward", "_convolution", "cudnn_convolution",
                       "cudnn_convolution_transpose"})
CUBLAS_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "vdot",
                        "_addmm_activation"})
CUDNN_FIX = "torch.backends.cudnn.deterministic = True; torch.backends.cudnn.benchmark = False"
CUBLAS_FIX = "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before the process starts"


def match(op: str, named: dict[str, Any], node: Optional[str]) -> Optional[Entry]:
    """The CUDA entry an op call falls under (``named``: its arguments by schema name;
    ``node``: the autograd node running it in the backward pass, else None)."""
    for entry in ENTRIES:
        if not entry.cuda or op not in entry.ops:
            continue
        if entry.backward_of is not None and node not in entry.backward_of:
            continue
        if entry.when is not None and not entry.when(named):
            continue
        return entry
    return None


def cublas_workspace_required(doc: Optional[str]) -> bool:
    """Does the installed torch ask for ``CUBLAS_WORKSPACE_CONFIG`` under deterministic
    algorithms? Older releases say so in ``use_deterministic_algorithms``'s docstring (and
    raise on cuBLAS ops without it); torch 2.14 neither says nor checks it."""
    return "CUBLAS_WORKSPACE_CONFIG" in (doc or "")
