"""Deduplication: kNN graph + Leiden, range and SemDeDup baselines, pHash near-duplicates."""
