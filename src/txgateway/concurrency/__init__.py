"""
Protecting slow backends (issue 24): concurrency limits, admission queue, micro-batching, coalescing.

Self-contained; not wired into the core yet (integration plan to follow).
"""
