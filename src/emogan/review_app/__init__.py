"""The review web tool: a local page to keep, drop or relabel every face crop, fast."""

from emogan.review_app.server import serve_review

__all__ = ["serve_review"]
