"""Runtime of the clinical RAG system: corpus, chunking, embedders, index, scoped retrieval, answers.

Importing the package applies the offline environment first, so no library we load can reach a hub,
an analytics host or a tokenizer download on the way in.
"""
from rag.offline import apply_offline_env

apply_offline_env()
