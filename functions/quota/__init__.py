"""Quotas of metered services: limits from settings, upstream rate-limit headers, admission."""
