"""Cluster-and-filter: the ``cluster`` transform (the defense of Wolf et al., arXiv 2503.05856).

A layer's references are embedded (TF-IDF over word tokens, numbers included: offline, no model
download; or an OpenAI-compatible embeddings endpoint the operator declares), split into two
clusters (k-means, k = 2, seeded), and when the split is clear -- the larger cluster holds at
least ``min_majority`` of them and the two centroids are no more than
``max_centroid_similarity`` cosine-similar -- only the larger cluster goes on. Otherwise (too
few references, a tie, near-identical answers, an endpoint that failed) every reference is
kept. It protects against a minority of deviant members, never against a majority.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moakit.config import StackConfig
from moakit.errors import ConfigError, MissingKeyError
from moakit.models.provider import read_key
from moakit.policies import ClusterFilterConfig, EmbeddingsEndpoint
from moakit.references import Filtered, Reference, ReferenceTransform
from moakit.result import DefenseAction


class EmbeddingsFailed(Exception):
    """The embeddings endpoint gave no usable answer (the message never carries the key)."""


def tfidf_vectors(texts: Sequence[str]) -> Any | None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        return TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(texts).toarray()
    except ValueError:  # nothing but punctuation
        return None


async def endpoint_vectors(texts: Sequence[str], endpoint: EmbeddingsEndpoint) -> Any:
    """Embeddings from the operator's OpenAI-compatible endpoint, in ``texts`` order."""
    import aiohttp
    import numpy as np

    headers = {}
    if endpoint.api_key_env:
        try:
            key = read_key(endpoint.api_key_env, who="the cluster defense's embeddings endpoint")
        except MissingKeyError:
            raise EmbeddingsFailed(f"{endpoint.api_key_env} is not set") from None
        headers["Authorization"] = f"Bearer {key}"
    url = endpoint.base_url.rstrip("/") + "/embeddings"
    timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                url, json={"model": endpoint.model, "input": list(texts)}, headers=headers
            ) as response,
        ):
            if response.status != 200:
                raise EmbeddingsFailed(f"HTTP {response.status}")
            body = await response.json()
        rows = sorted(body["data"], key=lambda row: row["index"])
        vectors = np.asarray([row["embedding"] for row in rows], dtype=float)
    except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
        raise EmbeddingsFailed(type(exc).__name__) from None
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise EmbeddingsFailed(f"{vectors.shape[0]} embeddings for {len(texts)} texts")
    return vectors


def split_majority(vectors: Any, settings: ClusterFilterConfig) -> list[int] | None:
    """Indices of the majority cluster of the rows of ``vectors``, or ``None`` when the split
    is unclear."""
    import numpy as np
    from sklearn.cluster import KMeans

    if len(np.unique(vectors, axis=0)) < 2:
        return None
    labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(vectors)
    sizes = [int((labels == k).sum()) for k in (0, 1)]
    major = 0 if sizes[0] >= sizes[1] else 1
    if sizes[major] / len(labels) < settings.min_majority or min(sizes) == 0:
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

    async def apply(references: Sequence[Reference]) -> Filtered:
        texts = [r.text for r in references]
        if len(texts) < settings.min_references or len(set(texts)) < 2:
            return Filtered(references)
        if settings.embedder == "endpoint" and settings.endpoint is not None:
            try:
                vectors = await endpoint_vectors(texts, settings.endpoint)
            except EmbeddingsFailed as exc:
                action = DefenseAction(
                    defense="cluster",
                    layer=0,
                    detail=f"embeddings endpoint failed ({exc}); kept every reference",
                )
                return Filtered(references, (action,))
        else:
            vectors = tfidf_vectors(texts)
        keep = None if vectors is None else split_majority(vectors, settings)
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
