"""Sorting a photo collection: the journal, the placement of copies, the review, and the XMP sidecars photo
managers read."""
