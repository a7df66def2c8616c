"""What analyze_results.py uses, one job per file (README.md, section Layout)."""
