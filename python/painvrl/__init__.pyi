# Type stubs of the painvrl package (python/painvrl/__init__.py).
from typing import Any, Callable, Iterable, Optional, Sequence, Union
import os

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike]

class DivergedError(RuntimeError): ...

def config_keys() -> dict[str, str]: ...
def synth(out: PathLike, seed: int = ..., users: int = ..., items: int = ...) -> "Dataset": ...

class Dataset:
    path: str
    name: str
    n_users: int
    n_items: int
    train_pairs: npt.NDArray[np.int32]  # (n, 2) (user, item)
    valid_pairs: npt.NDArray[np.int32]  # (n, 2)
    test_pairs: npt.NDArray[np.int32]  # (n, 2)
    features: Optional[npt.NDArray[np.float32]]  # (n_items, d), normalised as the engine does
    modalities: list[tuple[str, int, int]]  # (name, first column, width)
    user_ids: Optional[list[str]]
    item_ids: Optional[list[str]]
    @classmethod
    def load(cls, path: PathLike) -> "Dataset": ...
    @classmethod
    def from_arrays(
        cls,
        train_pairs: npt.ArrayLike,
        features: Optional[npt.ArrayLike] = ...,
        val_pairs: Optional[npt.ArrayLike] = ...,
        test_pairs: Optional[npt.ArrayLike] = ...,
        item_blocks: Optional[Sequence[int]] = ...,
        n_users: Optional[int] = ...,
        n_items: Optional[int] = ...,
        name: str = ...,
    ) -> "Dataset": ...

class Run:
    path: str
    @classmethod
    def open(cls, path: PathLike) -> "Run": ...
    @property
    def complete(self) -> bool: ...
    @property
    def summary(self) -> dict[str, Any]: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def metrics(self) -> Any: ...  # list[dict] or pandas.DataFrame
    @property
    def mask(self) -> Optional[npt.NDArray[np.float32]]: ...  # (d,)
    @property
    def user_factors(self) -> npt.NDArray[np.float32]: ...  # (n_users, W)
    @property
    def item_factors(self) -> npt.NDArray[np.float32]: ...  # (n_items, W)
    def recommend(
        self, users: Union[int, Iterable[int], npt.ArrayLike], k: int = ..., exclude_seen: bool = ...
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]: ...  # (n, k) each
    def evaluate(self, test_pairs: npt.ArrayLike, ks: Sequence[int] = ...) -> dict[str, float]: ...
    def resume(
        self, threads: Optional[int] = ..., callback: Optional[Callable[[str], None]] = ...
    ) -> "Run": ...

def train(
    dataset: Union[Dataset, PathLike],
    model: str = ...,
    config: Optional[dict[str, Any]] = ...,
    preset: Optional[str] = ...,
    out: Optional[PathLike] = ...,
    overwrite: bool = ...,
    callback: Optional[Callable[[str], None]] = ...,
) -> Run: ...
