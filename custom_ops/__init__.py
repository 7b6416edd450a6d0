"""Fused ops in namespace `mla` (`torch.ops.mla.*`); importing registers them."""
from . import gluon_op  # noqa: F401  (registers torch.ops.mla.wide_decode_gluon)
from . import latent_attention  # noqa: F401  (registers torch.ops.mla.latent_attention)
from . import indexer_cache  # noqa: F401  (registers torch.ops.mla.indexer_cache_write, indexer_rope_cache_write)
from . import paged_cache  # noqa: F401  (registers torch.ops.mla.cache_write, paged_decode)
from . import paged_sparse  # noqa: F401  (registers torch.ops.mla.paged_sparse_decode)
from . import prefill_attention  # noqa: F401  (registers torch.ops.mla.prefill_attention)
from . import rope  # noqa: F401  (registers torch.ops.mla.rope)
from . import sparse_attention  # noqa: F401  (registers torch.ops.mla.sparse_attention)
from .backend import KernelBackend
from .indexer_cache import PagedIndexerKeyCache
from .paged_cache import PagedLatentCache
from .reference import (ReferenceBackend, latent_attention_reference, prefill_attention_reference, rope_reference,
                        sparse_attention_reference)

__all__ = ["KernelBackend", "PagedIndexerKeyCache", "PagedLatentCache", "ReferenceBackend",
           "latent_attention_reference", "prefill_attention_reference", "rope_reference",
           "sparse_attention_reference"]
