"""Callbacks: step schedules, the divergence guard, checkpoints, weight averaging and the article's figures."""
