"""Language-model policy optimization (GRPO family) on Hugging Face causal LMs.

Light at import time: ``policyopt.lm.presets`` registers the presets without importing transformers;
the trainer (``policyopt.lm.trainer``) pulls in the heavy pieces.
"""
