"""`meshctl export RUN --out DIR`: a trained run as a Hugging Face model directory (every family)."""
