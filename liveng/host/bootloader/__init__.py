"""Boot loaders: one module per boot chain."""
