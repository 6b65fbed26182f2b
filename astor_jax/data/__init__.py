"""Data: the bundled tiny world, real-format loaders, TFDS builders, tokenizer."""
