"""Data stages: the demo world, collection, cropping, review and merging."""
