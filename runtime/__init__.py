"""The long-lived forecast runtime: model lifecycle, two-lane scheduler, inference, KDE, caches."""
