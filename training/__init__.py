"""What the two training scripts share, one job per file (README.md, section Layout)."""
