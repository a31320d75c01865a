"""The labeling web app: people rank completions in a browser (``rlhfkit label serve``).

FastAPI with Jinja2 templates and one plain JavaScript file, no build step. Every read and write
goes through :class:`rlhfkit.feedback.store.FeedbackStore`; this package only turns HTTP into
store calls and store results into pages. Import :func:`create_app` from ``.app``.
"""
