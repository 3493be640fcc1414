"""Everything Ray: the trainable, the search, the final evaluation."""
