"""On-device retrieval: a sqlite-vec index of embeddings, local k-NN decisions, and index
deltas that carry vectors and labels, never the raw sources."""

from .collection import Collection, Neighbour
from .errors import BadDelta, BadQuery, BadVector, ModelVersionMismatch, RetrievalError, UnknownCollection
from .delta import export_delta, export_delta_chunks, import_delta
from .imprint import Decision, Imprinter, image_embedder
from .index import VectorIndex

__all__ = ["BadDelta", "BadQuery", "BadVector", "Collection", "Decision", "Imprinter", "ModelVersionMismatch", "Neighbour",
           "RetrievalError", "UnknownCollection", "VectorIndex", "export_delta", "export_delta_chunks", "image_embedder",
           "import_delta"]
