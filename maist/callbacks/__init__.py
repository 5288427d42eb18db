"""Callbacks: step schedules, the divergence guard, and the article's figures."""
