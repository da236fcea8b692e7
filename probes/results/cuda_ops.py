"""The CUDA op scan's result: ops PyTorch documents as nondeterministic on CUDA, found in one
traced training step, with the modules that run them (``determinism.json``'s ``cuda_ops``).

Plain dataclasses, free of torch, like the rest of the result model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

#: ``category`` values: what ``torch.use_deterministic_algorithms(True)`` does to the op.
CATEGORIES = ("made_deterministic", "raises")


@dataclass
class CudaOp:
    """One documented nondeterministic op that the step ran."""

    op: str  # aten name, e.g. "aten::index_add"
    entry: str  # the table's key, e.g. "index_select_backward"
    doc: str  # the words of torch's docstring bullet
    category: str  # "made_deterministic" | "raises"
    passes: list[str] = field(default_factory=list)  # ["forward"] / ["backward"] / both
    modules: list[Optional[str]] = field(default_factory=list)  # dotted names; "" the model itself, None outside it
    count: int = 0  # calls in the scanned step
    cublas_workspace: bool = False  # needs CUBLAS_WORKSPACE_CONFIG under deterministic algorithms
    confirmed: Optional[bool] = None  # GPU only: warn_only warned (True) or stayed silent (False)
    warning: str = ""  # the kernel name PyTorch's warning gave, when confirmed


@dataclass
class CudaLibraryUse:
    """cuDNN convolutions or cuBLAS products in the step: settings, not single kernels."""

    library: str  # "cudnn" | "cublas"
    ops: list[str] = field(default_factory=list)  # aten names
    modules: list[str] = field(default_factory=list)
    fix: str = ""
    needed: bool = True  # cublas: whether this torch needs CUBLAS_WORKSPACE_CONFIG at all


@dataclass
class CudaOpsScan:
    """What one scanned training step runs that is nondeterministic on CUDA."""

    torch: str
    device: str  # where the scanned step ran
    source: str  # where the table comes from
    ops: list[CudaOp] = field(default_factory=list)  # [CudaOp]
    libraries: list[CudaLibraryUse] = field(default_factory=list)  # [CudaLibraryUse]
    cublas_workspace_required: bool = False  # deterministic algorithms need the variable here
    confirmed_on: Optional[str] = None  # the GPU the warn_only step ran on, when it ran
    error: Optional[str] = None  # the scan could not finish (the step raised)

    @property
    def raises(self) -> list[CudaOp]:
        return [o for o in self.ops if o.category == "raises"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> Optional["CudaOpsScan"]:
        if not data:
            return None
        data = dict(data)
        data["ops"] = [_pick(CudaOp, o) for o in data.get("ops", [])]
        data["libraries"] = [_pick(CudaLibraryUse, x) for x in data.get("libraries", [])]
        return _pick(cls, data)


def _pick(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
