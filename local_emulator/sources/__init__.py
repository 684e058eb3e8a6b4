"""Event sources: each turns what its store reports into normalised ObjectEvents."""
