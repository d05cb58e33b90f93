"""The retrieval gallery: reference embeddings computed once, their labels, and one exact kNN index.

Protocol (RobRank): the model embeds the whole test split once, in eval mode,
without gradients; embeddings are L2-normalised and compared with the Euclidean distance (metric "N",
``d in [0, 2]``). Attacks re-embed only the perturbed queries and rank them against this fixed gallery.
Ranking order everywhere is (distance, gallery index) ascending, identical on the faiss and torch backends
(``robustbench_dml.knn``); the query's own gallery row is excluded by index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_dml.knn import FlatIndex, column_blocks


class Gallery:
    """Fixed reference set: ``embeddings`` (N, D) float32 L2-normalised contiguous, ``labels`` (N,) int64.

    Both live on the same device and are never modified. ``backend`` picks the kNN search ("auto", "faiss",
    "torch"); every backend returns the same neighbours in the same order.
    """

    def __init__(self, embeddings: torch.Tensor, labels, *, normalize: bool = False, backend: str = "auto"):
        emb = torch.as_tensor(embeddings).detach()
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"gallery embeddings must be a non-empty (N, D) tensor, got {tuple(emb.shape)}")
        emb = emb.to(torch.float32)
        if normalize:
            emb = F.normalize(emb, dim=1)
        lab = torch.as_tensor(labels).to(device=emb.device, dtype=torch.int64).reshape(-1)
        if lab.shape[0] != emb.shape[0]:
            raise ValueError(f"{emb.shape[0]} embeddings but {lab.shape[0]} labels")
        self.embeddings = emb.contiguous()
        self.labels = lab.contiguous()
        self._index = FlatIndex(self.embeddings, backend)

    @property
    def backend(self) -> str:
        """The resolved kNN backend ("faiss" or "torch")."""
        return self._index.backend

    @property
    def max_sq_norm(self) -> float:
        """The largest squared norm of a gallery embedding (1 up to rounding for a normalised gallery)."""
        return self._index._max_sqnorm

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        n, d = self.embeddings.shape
        return f"Gallery(n={n}, dim={d}, device={self.device}, backend={self.backend!r})"

    def distances(self, z: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(B, stop-start) Euclidean distances from rows of ``z`` (B, D) to gallery rows [start, stop).

        Differentiable w.r.t. ``z`` (``torch.cdist``; its gradient at distance 0 is 0, never NaN).
        """
        stop = len(self) if stop is None else stop
        g = self.embeddings[start:stop]
        if g.device != z.device:
            g = g.to(z.device)
        return torch.cdist(z.to(g.dtype) if z.dtype != g.dtype else z, g)

    def blocks(self, rows: int, columns: int | None = None) -> list[tuple[int, int]]:
        """(start, stop) gallery ranges of one pass with ``rows`` query rows (:func:`robustbench_dml.knn.column_blocks`:
        rows x columns near 1M elements unless ``columns`` is given); memory O(rows x columns) per block."""
        return column_blocks(len(self), rows, columns)

    def block_distances(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(B, stop-start) Euclidean distances from rows of ``z`` to gallery rows [start, stop), no grad: the square
        root of :meth:`block_sq_distances` (clamped at 0). The same quantity as :meth:`distances` from one matrix
        product, ~1.8x faster on CPU than ``torch.cdist``, which re-derives the gallery's norms and copies the block
        on every call; every per-step pass of the attacks uses it."""
        return self.block_sq_distances(z, start, stop).clamp_min_(0.0).sqrt_()

    def block_sq_distances(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(B, stop-start) squared distances by the fast expansion formula, unclamped, no grad
        (:meth:`robustbench_dml.knn.FlatIndex.sq_distances`); within :meth:`tie_slack` of the true values."""
        with torch.no_grad():
            return self._index.sq_distances(z, start, stop)

    def tie_slack(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) float64 bound on the error of :meth:`block_sq_distances` for the rows of ``z``: a comparison closer
        than this is a near-tie, decided by :func:`robustbench_dml.knn.canonical_distances`."""
        return self._index.tie_slack(z)

    def knn(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k nearest gallery items per query row, sorted by (distance, index) ascending.

        ``exclude``: (B,) gallery index to skip for each query (its own row), -1 for none.
        Returns ``(dist (B, k) float32, idx (B, k) int64)`` on the queries' device.
        """
        return self._index.search(queries, k, exclude)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def embed_tensor(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """(B, D) L2-normalised embeddings of ``images`` (B, C, H, W) in [0, 1]; eval mode (restored), no grad."""
    from attacks.pgd import eval_mode

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = []
    with eval_mode(model), torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            out.append(F.normalize(model(images[s:s + batch_size]).float(), dim=1))
    if not out:
        raise ValueError("embed_tensor got no images")
    return torch.cat(out).contiguous()


def embed(model: nn.Module, dataset, *, batch_size: int = 256, device: str | torch.device | None = None,
          progress: bool = False, backend: str = "auto") -> Gallery:
    """Embed ``dataset`` (items ``(image in [0,1], label)``) once, in loader order, into a :class:`Gallery`.

    Eval mode with every submodule's mode restored afterwards, no gradients, batches of ``batch_size`` moved
    to ``device`` (default: the model's device; the model itself is not moved).
    """
    from torch.utils.data import DataLoader

    from attacks.pgd import eval_mode

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("cannot build a gallery from an empty dataset")
    dev = torch.device(device) if device is not None else _model_device(model)
    mdev = _model_device(model)
    if dev.type != mdev.type or (dev.index is not None and mdev.index is not None and dev.index != mdev.index):
        raise ValueError(f"model is on {mdev} but embedding was asked on {dev}; move the model first")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, description="embedding gallery", total=len(loader))
    # filled in place: peak memory is the gallery plus one batch, not twice the gallery
    emb = labels = None
    start = 0
    with eval_mode(model), torch.no_grad():
        for images, y in batches:
            z = F.normalize(model(images.to(dev)).float(), dim=1)
            if emb is None:
                emb = torch.empty(len(dataset), z.shape[1], dtype=torch.float32, device=dev)
                labels = torch.empty(len(dataset), dtype=torch.int64)
            emb[start:start + len(z)] = z
            labels[start:start + len(z)] = torch.as_tensor(y).reshape(-1)
            start += len(z)
    if start != len(dataset):
        raise ValueError(f"the dataset yielded {start} items but has length {len(dataset)}")
    return Gallery(emb, labels.to(dev), backend=backend)
