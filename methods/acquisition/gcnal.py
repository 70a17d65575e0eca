"""GCNAL: sequential GCN for active learning -- UncertainGCN and CoreGCN (Caramalau, Bhattarai & Kim,
"Sequential Graph Convolutional Network for Active Learning", CVPR 2021, Sec. 3).

Per round (the paper's Phase II-IV, Fig. 1 and Sec. 3.2 "Sequential GCN selection process"):

* Graph. The nodes are the labelled rows and a seeded subset of
  ``pool_sample`` (10,000) unlabelled rows, as the authors' code samples its
  graph every cycle (``pool_sample: null``: every unlabelled row). Node features ``v`` are the cached
  features in ``feature_space`` (default ``image``), L2-normalised. Edges join
  each node to its ``k_nn`` nearest neighbours (symmetrised: i~j when either is
  among the other's neighbours), weighted by the cosine similarity
  ``w_ij = max(v_i . v_j, 0)``; self-loops weigh ``v_i . v_i = 1``, so ``A + I``
  is ``V V^T`` restricted to the kNN graph and its diagonal. The propagation
  matrix is Kipf & Welling's symmetric normalisation
  ``Â = D^-1/2 (A + I) D^-1/2`` with ``D_ii = sum_j (A + I)_ij``
  (:func:`normalised_knn_adjacency`), a sparse matrix with at most
  ``N (2 k_nn + 1)`` entries.
* GCN (the paper's two graph-convolution layers, sigmoid output):
  ``H = ReLU(Â V W1 + b1)``, ``s = sigmoid(Â dropout(H) W2 + b2)``, hidden
  width ``hidden``, dropout after the first layer, weights drawn as the
  authors' ``GraphConvolution`` does (uniform in +-1/sqrt(fan_out)).
* Loss (the paper's binary cross-entropy between labelled and unlabelled
  nodes, labelled = 1, unlabelled = 0, balanced by lambda):
  ``L = -(1/|L|) sum_{i in L} log s_i - lambda (1/|U|) sum_{j in U} log(1 - s_j)``
  with ``lambda = balance`` (1.2), full-batch Adam (lr 1e-3, weight decay
  5e-4) for ``epochs`` (200) epochs, weights re-initialised every round.
* UncertainGCN (``variant: uncertain``, the default): the ``budget``
  unlabelled nodes whose confidence is closest to the margin,
  ``argmin_j |s_j - s_margin|`` with ``s_margin = 0.1`` -- nodes the GCN
  scores near the margin: unlike the labelled set, but not confidently so.
  Picked in one shot per round from the sorted scores (ties to the node
  earlier in ``ctx.unlabelled``), as the paper's sampling step and the
  authors' code do; the GCN is retrained only in the next round.
* CoreGCN (``variant: core``): greedy k-center (Sener & Savarese's CoreSet,
  :func:`methods.kernels.greedy_k_center`, Euclidean) on the GCN's first-layer
  node embeddings ``H`` (evaluation mode, no dropout), the labelled nodes as
  the initial centres.

Defaults and readings:

* ``hidden = 512``, ``dropout = 0.3``, ``lr = 1e-3``, ``weight_decay = 5e-4``,
  ``epochs = 200``, ``balance = 1.2``, ``s_margin = 0.1``: the paper's
  settings as this project reads them (the released ``main.py`` defaults to
  128 hidden units; sweep ``hidden`` to compare).
* ``k_nn = 10`` (ours; the paper's graph is dense, so it has no k): every
  node keeps at least ten neighbours to aggregate over, while the graph holds
  at most 21 N entries -- about 300 MB at 1.28M rows, where the dense graph
  would hold N^2 = 1.6e12. Sweep it (e.g. 10-20) if the graph matters.
* ``knn: exact`` builds the graph with the exact kNN
  (:func:`methods.kernels.knn`, O(N^2 d)); ``knn: approximate`` uses a faiss
  IVF index (:func:`methods.kernels.approximate_knn`, about O(N^1.5 d)) and
  is meant for pools of about 100K rows and more; ``knn: cells``
  (:func:`methods.kernels.cell_knn.cell_knn`) probes the same fraction of the
  nodes per cell instead of per row, a matrix product per cell, for graphs of
  about a million nodes (``pool_sample: null`` at ImageNet scale).
* Cold start (nothing labelled): the classifier would have no positive
  class, and its optimum (every node unlabelled) says nothing. Both variants
  then pick by greedy k-center on the L2-normalised node features, the first
  centre uniform from ``rng`` -- CoreGCN's rule with no labelled centres,
  applied to the features because no GCN can be trained
  (``extras["gcnal_cold_start"] = 1``).
* Every random choice (the ``pool_sample`` subset, the approximate index,
  weight initialisation, dropout masks) comes from the ``rng`` handed to
  ``select``: the same seed gives the same selection.
* Diagnostics in ``ctx.extras`` (logged as ``select_<key>``):
  ``gcnal_train_accuracy`` (nodes whose rounded score matches their
  labelled/unlabelled flag), ``gcnal_labelled_accuracy``,
  ``gcnal_unlabelled_accuracy``, ``gcnal_loss`` (the last epoch's L),
  ``gcnal_mean_unlabelled_score`` and ``gcnal_graph_entries``.

Deviations from the paper:

* The adjacency. The paper builds the dense N x N similarity ``S = V V^T``
  over all nodes, removes its diagonal, normalises it by degree and adds the
  identity back (the authors' code: ``(S - I) D^-1 + I``, D the column sums);
  that is O(N^2) in time and memory. This builds the sparse kNN graph above
  with the symmetric normalisation instead.
* Memory bounding. The first layer is computed as ``(Â V) W1`` with ``Â V``
  precomputed once (exact algebra; ``Â`` is fixed). The GCN is trained
  full-batch, as in the paper, but the first layer runs in row blocks: when
  its activations for all nodes exceed ``working_mb`` they are recomputed
  block by block in the backward pass instead of kept (the gradient is the
  same; dropout masks are drawn per block of rows from the round's seed, so
  they do not depend on ``working_mb``). The second layer's gradient uses
  ``Â``'s symmetry: ``dL/d(dropout(H) W2) = Â dL/dz``.
* Nodes: 10,000 sampled unlabelled rows by default, the authors' code's
  subset (the paper does not say; with every row as a node, 200 full-batch
  epochs at hidden 512 cost about 52 GFLOP per epoch at 100K rows -- 250 s
  unloaded, 1,000 s loaded on two cores -- and 16 hours at 1.28M);
  ``pool_sample: null`` puts every unlabelled row in the graph.
* Negative cosine similarities are clipped to 0 (no edge), so every degree is
  positive and ``D^-1/2`` exists; the dense ``V V^T`` keeps them.
* CoreGCN's embeddings are the first GCN layer, as the paper describes; the
  authors' released code runs its k-center on the input features instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ..base import AcquisitionStrategy, Selection, SelectionContext
from ..core.devices import pick_device
from ..feature_space import FeatureSpace, features_in_space, space_inputs
from ..kernels import SELF_KNN_SEARCHES, greedy_k_center, self_knn
from ..kernels._torch import rows_per_chunk
from ..options import Int, Number, PluginOptions
from ..registry import register_acquisition
from .clustering import KnnProbes, WorkingMB

#: Rows per dropout-mask block: masks are drawn per block, so the row chunking never changes them.
MASK_BLOCK = 4096
#: Bytes of first-layer activations one node keeps for the backward pass (ReLU output, mask, dropped output).
_ACTIVATION_BYTES_PER_UNIT = 16


# ----------------------------------------------------------------------------------------------------------------
# The graph


def normalised_knn_adjacency(x: np.ndarray, k: int, method: str = "exact", seed: int = 0, device: str | None = None,
                             working_bytes: int = 256 << 20, nprobe: int | None = None):
    """``Â = D^-1/2 (A + I) D^-1/2`` of the symmetrised cosine kNN graph of unit rows ``x`` (scipy CSR, float32).

    ``A_ij = max(x_i . x_j, 0)`` when j is among i's ``k`` nearest other rows
    or i among j's (``method``: one of :data:`methods.kernels.SELF_KNN_SEARCHES`; ``nprobe``: the cells an
    approximate one probes, None for its default), else 0.
    """
    import scipy.sparse as sp

    n = len(x)
    sq_dist, ids = self_knn(x, k, method, seed=seed, device=device, working_bytes=working_bytes, nprobe=nprobe)
    cosine = np.maximum(1.0 - sq_dist.astype(np.float32) / 2.0, 0.0).ravel()  # ||a - b||^2 = 2 - 2 a.b
    rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    a = sp.csr_matrix((cosine, (rows, ids.ravel())), shape=(n, n), dtype=np.float32)
    a = a.maximum(a.T).tocsr()  # symmetric: the union of the two directions, cosine weights
    a = (a + sp.identity(n, dtype=np.float32, format="csr")).tocsr()  # self-loops: x_i . x_i = 1 (knn has no self)
    a.eliminate_zeros()
    a.sort_indices()
    inv_sqrt = (1.0 / np.sqrt(np.asarray(a.sum(axis=1), dtype=np.float64).ravel())).astype(np.float32)
    a.data *= inv_sqrt[np.repeat(np.arange(n), np.diff(a.indptr))] * inv_sqrt[a.indices]
    return a.astype(np.float32, copy=False)


def _torch_csr(adj, device: str):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.as_tensor(adj.indptr, dtype=torch.int64),
                                       torch.as_tensor(adj.indices, dtype=torch.int64),
                                       torch.as_tensor(adj.data, dtype=torch.float32), size=adj.shape,
                                       check_invariants=False).to(device)


def _spmm(a, dense):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return a @ dense


# ----------------------------------------------------------------------------------------------------------------
# The GCN


@dataclass
class GCNFit:
    """A trained GCN on one graph: its sigmoid scores, first-layer embeddings (if asked) and weights."""

    scores: np.ndarray  # (N,) s_i in evaluation mode
    embeddings: np.ndarray | None  # (N, hidden) H = ReLU(Â V W1 + b1), evaluation mode
    params: dict[str, np.ndarray]  # W1 (d, h), b1 (h,), W2 (h, 1), b2 (1,)
    loss: float  # L at the last epoch (training mode)


def init_params(d: int, hidden: int, generator) -> dict:
    """The authors' ``GraphConvolution`` initialisation: every weight and bias uniform in +-1/sqrt(fan_out)."""
    import torch

    device = generator.device

    def uniform(shape, bound):
        return ((torch.rand(shape, generator=generator, device=device) * 2 - 1) * bound).requires_grad_(True)

    h_bound = 1.0 / float(np.sqrt(hidden))
    return {"W1": uniform((d, hidden), h_bound), "b1": uniform((hidden,), h_bound),
            "W2": uniform((hidden, 1), 1.0), "b2": uniform((1,), 1.0)}


def gcn_loss(z, positive, balance: float):
    """``-(1/|L|) sum_L log s - balance (1/|U|) sum_U log(1 - s)`` with ``s = sigmoid(z)`` (log-sigmoid, stable)."""
    import torch.nn.functional as F

    return -F.logsigmoid(z[positive]).mean() - balance * F.logsigmoid(-z[~positive]).mean()


def _dropout_keep(epoch_seed: int, start: int, stop: int, hidden: int, p: float, device: str):
    """Inverted-dropout multipliers for rows [start, stop): one generator per MASK_BLOCK rows of the epoch."""
    import torch

    parts = []
    for b in range(start, stop, MASK_BLOCK):
        g = torch.Generator(device=device).manual_seed(epoch_seed + b // MASK_BLOCK)
        keep = torch.rand((min(b + MASK_BLOCK, stop) - b, hidden), generator=g, device=device) >= p
        parts.append(keep.to(torch.float32).div_(1.0 - p))
    return torch.cat(parts)


def train_gcn(adj, x: np.ndarray, positive: np.ndarray, *, hidden: int = 512, epochs: int = 200, lr: float = 1e-3,
              weight_decay: float = 5e-4, dropout: float = 0.3, balance: float = 1.2, seed: int = 0,
              device: str | None = None, working_bytes: int = 1 << 30, embed: bool = False) -> GCNFit:
    """Train the two-layer GCN to tell ``positive`` (labelled) nodes from the rest on ``adj`` (see module).

    ``adj`` is the symmetric normalised adjacency (scipy CSR, N x N) and ``x``
    the (N, d) node features. Full-batch Adam; the first layer runs in row
    chunks, kept for the backward pass when ``N * hidden * 16`` bytes fit
    ``working_bytes`` and recomputed otherwise. All randomness comes from
    ``seed``.
    """
    import torch

    device = pick_device(device)
    positive = np.asarray(positive, dtype=bool)
    n = len(positive)
    if not positive.any() or positive.all():
        raise ValueError("train_gcn: needs both labelled (positive) and unlabelled nodes")
    generator = torch.Generator(device=device).manual_seed(int(seed))
    a = _torch_csr(adj, device)
    with torch.no_grad():
        ax = _spmm(a, torch.as_tensor(np.asarray(x, dtype=np.float32), device=device))  # Â V, fixed
    params = init_params(ax.shape[1], hidden, generator)
    w1, b1, w2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    opt = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    pos = torch.as_tensor(positive, device=device)
    keep_all = n * hidden * _ACTIVATION_BYTES_PER_UNIT <= working_bytes
    step = max(1, rows_per_chunk(hidden * _ACTIVATION_BYTES_PER_UNIT, working_bytes, itemsize=1) // MASK_BLOCK)
    step *= MASK_BLOCK
    starts = list(range(0, n, step))

    def first_layer_out(s: int, epoch_seed: int | None):
        """``dropout(ReLU(Â V W1 + b1)) W2`` for rows [s, s + step): (rows, 1)."""
        h = torch.relu(torch.addmm(b1, ax[s: s + step], w1))
        if epoch_seed is not None and dropout > 0:
            h = h * _dropout_keep(epoch_seed, s, min(s + step, n), hidden, dropout, device)
        return h @ w2

    loss_value = float("nan")
    for _ in range(epochs):
        epoch_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=device))
        opt.zero_grad(set_to_none=False)
        with torch.set_grad_enabled(keep_all):
            parts = [first_layer_out(s, epoch_seed) for s in starts]
        u = torch.cat([p.detach() for p in parts])  # (N, 1)
        z = _spmm(a, u).requires_grad_(True)  # second layer before its bias
        loss = gcn_loss((z + b2)[:, 0], pos, balance)
        loss.backward()  # dL/dz and dL/db2
        grad_u = _spmm(a, z.grad)  # Â is symmetric: dL/du = Â^T dL/dz = Â dL/dz
        for s, part in zip(starts, parts):
            if not keep_all:
                part = first_layer_out(s, epoch_seed)
            part.backward(grad_u[s: s + step])
        opt.step()
        loss_value = float(loss.detach())
    with torch.no_grad():
        hs, us = [], []
        for s in starts:
            h = torch.relu(torch.addmm(b1, ax[s: s + step], w1))
            us.append(h @ w2)
            if embed:
                hs.append(h.cpu().numpy())
        scores = torch.sigmoid(_spmm(a, torch.cat(us)) + b2)[:, 0].cpu().numpy()
    return GCNFit(scores=scores.astype(np.float32), embeddings=np.concatenate(hs) if embed else None,
                  params={k: v.detach().cpu().numpy() for k, v in params.items()}, loss=loss_value)


# ----------------------------------------------------------------------------------------------------------------
# Selection rules


def _unit_rows_in_place(x: np.ndarray) -> np.ndarray:
    """``unit_rows`` without a second N x d copy (``features_in_space`` returns a fresh float32 array)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]  # no N x d temporary
    return x


def margin_picks(scores: np.ndarray, budget: int, s_margin: float) -> np.ndarray:
    """UncertainGCN: positions of the ``budget`` scores closest to ``s_margin``; ties to the lower position."""
    gap = np.abs(np.asarray(scores, dtype=np.float64) - float(s_margin))
    return np.lexsort((np.arange(len(gap)), gap))[: int(budget)].astype(np.int64)


@dataclass
class GraphRound:
    """One round's graph and fitted GCN: node ``i`` is pool row ``nodes[i]``; the first ``n_labelled`` are labelled."""

    nodes: np.ndarray
    n_labelled: int
    fit: GCNFit
    entries: int  # stored entries of Â


@register_acquisition("gcnal")
class SequentialGCN(AcquisitionStrategy):
    """UncertainGCN / CoreGCN on a sparse kNN graph of labelled and unlabelled rows (see module)."""

    class Options(PluginOptions):
        variant: Literal["uncertain", "core"] = Field(
            "uncertain", description="uncertain: UncertainGCN (closest to s_margin); core: CoreGCN (k-center on H)")
        feature_space: FeatureSpace = "image"
        k_nn: Int = Field(10, ge=1, description="neighbours per node of the kNN graph")
        knn: Literal[SELF_KNN_SEARCHES] = Field(
            "exact", description="exact: exact kNN graph; approximate: faiss IVF, for pools of ~100K rows and more; "
                                 "cells: clustered cells probed per cell (one product each), for ~1M nodes")
        knn_probes: KnnProbes = None
        hidden: Int = Field(512, ge=1, description="width of the first GCN layer")
        epochs: Int = Field(200, ge=1, description="full-batch Adam epochs of the GCN")
        lr: Number = Field(1e-3, gt=0, description="Adam learning rate")
        weight_decay: Number = Field(5e-4, ge=0, description="Adam weight decay")
        dropout: Number = Field(0.3, ge=0, lt=1, description="dropout after the first layer")
        balance: Number = Field(1.2, ge=0, description="lambda, the weight of the unlabelled term of the loss")
        s_margin: Number = Field(0.1, ge=0, le=1, description="UncertainGCN's confidence margin")
        pool_sample: Int | None = Field(
            10000, ge=1, description="unlabelled rows in the graph, a seeded subset (the authors' code: 10,000); "
                                     "None: every unlabelled row")
        working_mb: WorkingMB = 1024

    def configure(self) -> None:
        self.requires = space_inputs("gcnal", self.feature_space)

    def _candidates(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
        if budget < 0 or budget > len(unlabelled):
            raise ValueError(f"gcnal: budget {budget} must be in [0, {len(unlabelled)}] "
                             "(the number of unlabelled candidates)")
        if self.pool_sample is None or len(unlabelled) <= self.pool_sample:
            return unlabelled
        if budget > self.pool_sample:
            raise ValueError(f"gcnal: budget {budget} exceeds pool_sample={self.pool_sample} unlabelled nodes; "
                             "raise pool_sample (or set it to null) or lower the budget")
        return np.sort(rng.choice(unlabelled, size=self.pool_sample, replace=False))

    def fit_round(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> GraphRound:
        """Build this round's graph and train the GCN on it (the steps ``select`` runs before its rule)."""
        unlabelled = self._candidates(ctx, budget, rng)
        labelled = np.asarray(ctx.labelled, dtype=np.int64)
        nodes = np.concatenate([labelled, unlabelled])
        if self.k_nn >= len(nodes):
            raise ValueError(f"gcnal: k_nn={self.k_nn} needs more than {self.k_nn} graph nodes, but the graph has "
                             f"{len(nodes)} (labelled + unlabelled); set k_nn below {len(nodes)}")
        graph_seed, torch_seed = (int(s) for s in rng.integers(2 ** 31, size=2))
        x = _unit_rows_in_place(features_in_space(ctx, self.feature_space, nodes))
        working = self.working_mb << 20
        adj = normalised_knn_adjacency(x, self.k_nn, self.knn, seed=graph_seed, working_bytes=working,
                                       nprobe=self.knn_probes)
        positive = np.zeros(len(nodes), bool)
        positive[: len(labelled)] = True
        fit = train_gcn(adj, x, positive, hidden=self.hidden, epochs=self.epochs, lr=float(self.lr),
                        weight_decay=float(self.weight_decay), dropout=float(self.dropout),
                        balance=float(self.balance), seed=torch_seed, working_bytes=working,
                        embed=self.variant == "core")
        return GraphRound(nodes, len(labelled), fit, int(adj.nnz))

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        if budget == 0:
            return Selection(np.empty(0, np.int64))
        if len(ctx.labelled) == 0:
            return self._cold(ctx, budget, rng)
        graph = self.fit_round(ctx, budget, rng)
        fit, n_lab = graph.fit, graph.n_labelled
        self._note(ctx, graph)
        if self.variant == "uncertain":
            picks = n_lab + margin_picks(fit.scores[n_lab:], budget, float(self.s_margin))
        else:
            picks = greedy_k_center(fit.embeddings, np.arange(n_lab, len(graph.nodes)), np.arange(n_lab), budget,
                                    rng, working_bytes=self.working_mb << 20)
        return Selection(graph.nodes[picks])

    def _cold(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        """No labelled node, so no positive class: greedy k-center on the unit features (see module)."""
        unlabelled = self._candidates(ctx, budget, rng)
        x = _unit_rows_in_place(features_in_space(ctx, self.feature_space, unlabelled))
        ctx.extras["gcnal_cold_start"] = 1.0
        picks = greedy_k_center(x, np.arange(len(unlabelled)), np.empty(0, np.int64), budget, rng,
                                working_bytes=self.working_mb << 20)
        return Selection(unlabelled[picks])

    @staticmethod
    def _note(ctx: SelectionContext, graph: GraphRound) -> None:
        labels = np.arange(len(graph.nodes)) < graph.n_labelled
        right = (graph.fit.scores >= 0.5) == labels
        ctx.extras.update({
            "gcnal_train_accuracy": float(right.mean()),
            "gcnal_labelled_accuracy": float(right[labels].mean()),
            "gcnal_unlabelled_accuracy": float(right[~labels].mean()),
            "gcnal_loss": graph.fit.loss,
            "gcnal_mean_unlabelled_score": float(graph.fit.scores[~labels].mean()),
            "gcnal_graph_entries": float(graph.entries),
        })
