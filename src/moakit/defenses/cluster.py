"""Cluster-and-filter: the ``cluster`` transform (the defense of Wolf et al., arXiv 2503.05856).

A layer's references are embedded (TF-IDF over word tokens, numbers included: offline, no model
download), split into two clusters (k-means, k = 2, seeded), and when the split is clear -- the
larger cluster holds at least ``min_majority`` of them and the two centroids are no more than
``max_centroid_similarity`` cosine-similar -- only the larger cluster goes on. Otherwise (too
few references, a tie, near-identical answers) every reference is kept. It protects against a
minority of deviant members, never against a majority.
"""

from __future__ import annotations

from collections.abc import Sequence

from moakit.config import ClusterFilterConfig, StackConfig
from moakit.errors import ConfigError
from moakit.references import Filtered, Reference, ReferenceTransform
from moakit.result import DefenseAction


def split_majority(texts: Sequence[str], settings: ClusterFilterConfig) -> list[int] | None:
    """Indices of the majority cluster of ``texts``, or ``None`` when the split is unclear."""
    if len(texts) < settings.min_references or len(set(texts)) < 2:
        return None
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectors = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(texts).toarray()
    except ValueError:  # nothing but stop words / punctuation
        return None
    labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(vectors)
    sizes = [int((labels == k).sum()) for k in (0, 1)]
    major = 0 if sizes[0] >= sizes[1] else 1
    if sizes[major] / len(texts) < settings.min_majority or min(sizes) == 0:
        return None
    centroids = [vectors[labels == k].mean(axis=0) for k in (0, 1)]
    norms = [float(np.linalg.norm(c)) for c in centroids]
    similarity = float(centroids[0] @ centroids[1]) / (norms[0] * norms[1]) if all(norms) else 1.0
    if similarity > settings.max_centroid_similarity:
        return None
    return [i for i, label in enumerate(labels) if label == major]


def cluster_transform(config: StackConfig) -> ReferenceTransform:
    settings = config.references.cluster
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "references.transforms: 'cluster' needs scikit-learn (pip install 'moakit[eval]')",
            field="references.transforms",
        ) from None

    def apply(references: Sequence[Reference]) -> Filtered:
        keep = split_majority([r.text for r in references], settings)
        if keep is None or len(keep) == len(references):
            return Filtered(references)
        kept = [references[i] for i in keep]
        dropped = [r.label for i, r in enumerate(references) if i not in keep]
        action = DefenseAction(
            defense="cluster",
            layer=0,
            detail=f"kept the majority cluster ({len(kept)} of {len(references)} references)",
            dropped=dropped,
        )
        return Filtered(kept, (action,))

    return apply
