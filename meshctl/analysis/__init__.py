"""Analysis of trained runs: loading, lm-eval evaluation, offline tasks, generation, hidden-state probes.

Modules import torch and lm-eval on use; nothing is imported here.
"""
