"""``pacs-ai compare``: agreement reports of a model against another model or reference
segmentations (metrics, SEG masks on the source grid, references from a PACS, report)."""
