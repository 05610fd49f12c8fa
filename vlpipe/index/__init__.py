"""Building indexes over a run's embeddings (vlpipe.search answers queries over them)."""
