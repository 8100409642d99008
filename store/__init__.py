"""steadychat store: checkpointers, vector memory, embeddings, thread lifecycle."""
