"""Training: the encoder and LLM-stage loops, checkpoints and logs, and the run orchestration that writes a run
folder (encoder stage, then the LLM stages)."""
