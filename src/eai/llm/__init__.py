"""The language-model side of EAI-LLM: the backbone, the skeleton tokenizer (MGST), the prompts, the LLM that
reads skeleton tokens, its decoding in the grammar of grounded explanations, and their evidence and scores."""
