"""Evaluation and inference-time discussion: evaluation runs, strategies (single,
self-consistency, self-discussion, debate), agents, statistics and transcripts."""
