"""One module per source format; each turns raw files into Arrow tables."""
