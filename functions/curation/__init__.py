"""Curation (seed 5's curation app): batch results into Label Studio for review, reviewed labels back as ground truth."""
