"""Memory-bounded kernels for acquisition at ImageNet scale (torch: CPU or CUDA; faiss for clustering)."""

from .ann import SELF_KNN_SEARCHES, approximate_knn, self_knn
from .badge import badge_kmeanspp, factorised_sq_dist
from .cell_knn import cell_knn
from .clustering import kmeans, knn, nearest_to_centroids
from .radius import min_dist_to_other_cluster, radius_graph
from .kcenter import greedy_k_center

__all__ = ["SELF_KNN_SEARCHES", "approximate_knn", "badge_kmeanspp", "cell_knn", "factorised_sq_dist",
           "greedy_k_center", "kmeans", "knn", "min_dist_to_other_cluster", "nearest_to_centroids", "radius_graph", "self_knn"]
