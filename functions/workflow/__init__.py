"""Operating workflows of any kind: status, suspend and resume by hand, resume after a quota."""
