"""Data: corpora registered by name (``datasets``), tokenised stratified splits (``split``) and
client partitions (``partition``)."""
