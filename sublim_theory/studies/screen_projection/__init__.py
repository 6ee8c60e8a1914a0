"""Exact vs projected attributions on the tiny-LM screen (issue 22 item 4)."""
